import Synchronization
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog
import DiskSnapQcow2

public struct RestoreRequest: Sendable {
    public var snapshot: String
    public var targetPath: String
    public var force = false
    /// Restore only this partition (its byte range from the identity recorded at snapshot time).
    public var partition: Int?
    /// TARGET is the existing disk: compare it chunk by chunk and write only what differs.
    public var inPlace = false
    /// With `inPlace`: compare and report, write nothing.
    public var dryRun = false
    /// After writing: drop the target's cached pages, read it back and compare every chunk.
    public var verify = false
    /// The new file's format: raw (default) or a sparse qcow2 v3 image.
    public var format: SourceFormat = .raw
    public var progress: (any ProgressObserver)?
    public var workers = Workers.restoreCount

    public init(snapshot: String, targetPath: String) {
        self.snapshot = snapshot
        self.targetPath = targetPath
    }
}

public struct RestoreResult: Sendable {
    public var record: SnapshotRecord
    public var targetPath: String
    public var bytesWritten: UInt64
    public var seconds: Double
    public var inPlace = false
    public var dryRun = false
    /// In place: the target bytes read and compared.
    public var bytesExamined: UInt64 = 0
    /// In place: chunks (and their bytes) that differed from the snapshot.
    public var chunksDiffering: UInt64 = 0
    public var bytesDiffering: UInt64 = 0
    /// In place, a file target: its size before it was set to the snapshot's.
    public var resizedFrom: UInt64?
    /// A `--verify` pass read the target back and found it identical.
    public var verified = false
}

/// An in-place restore admitted (`Restorer.admitInPlace`): it holds the repository's locks
/// and the target, open exclusively, until `run` ends. Used by one thread at a time.
public final class AdmittedRestore: @unchecked Sendable {
    let restorer: Restorer
    let request: RestoreRequest
    let snapshot: OpenedSnapshot
    let range: ByteRange
    let target: InPlaceTarget
    let index: ChunkLocator
    let packs: PackFiles
    private var locks: [HeldLock]

    public var record: SnapshotRecord { snapshot.record }

    init(restorer: Restorer, request: RestoreRequest, snapshot: OpenedSnapshot, range: ByteRange, target: InPlaceTarget,
         index: ChunkLocator, packs: PackFiles, locks: [HeldLock]) {
        self.restorer = restorer
        self.request = request
        self.snapshot = snapshot
        self.range = range
        self.target = target
        self.index = index
        self.packs = packs
        self.locks = locks
    }

    /// Compares and writes what differs; then the locks are let go of. Runs once.
    public func run() throws -> RestoreResult {
        defer { while !locks.isEmpty { _ = locks.removeLast() } }
        return try restorer.restoreInPlace(request, snapshot: snapshot, range: range, target: target, index: index, packs: packs)
    }
}

/// Writes a snapshot's bytes to a file or block device, in parallel, verifying every chunk.
///
/// A file target is built under a temporary name in the target's directory and renamed
/// into place only when complete and fsynced: a half-restored file never has the final
/// name. Zero chunks are holes in files and BLKZEROOUT ranges on devices. In place, the
/// existing disk is compared chunk by chunk and only what differs is written
/// (`InPlaceWork`); a run interrupted at any point is finished by running it again.
public struct Restorer {
    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    public func restore(_ request: RestoreRequest) throws -> RestoreResult {
        if request.inPlace { return try admitInPlace(request).run() }
        let lock = try repository.lock(.shared, for: "restore")
        let readers = try repository.readersLock()
        defer { withExtendedLifetime((lock, readers)) {} }
        let snapshot = try OpenedSnapshot.open(request.snapshot, in: repository)
        let range = try snapshot.byteRange(partition: request.partition)
        let index = try ChunkLocator.open(repository)
        TestHooks.pause(at: "restore-after-index")
        let packs = PackFiles(repository: repository, index: index)
        guard !request.dryRun else {
            throw EngineError(code: "InvalidParameter.DryRun", "--dry-run compares an existing disk: it needs --in-place", exitStatus: .invalidParameter)
        }
        let record = snapshot.record
        var layout: Qcow2Layout?
        if request.format == .qcow2 {
            guard !request.verify else {
                throw EngineError(code: "InvalidParameter.Format", "--verify reads a raw target; check a qcow2 target with qemu-img compare", exitStatus: .invalidParameter)
            }
            guard range.start % Qcow2Layout.clusterSize == 0 else {
                throw EngineError(code: "InvalidParameter.Format", "partition \(request.partition ?? 0) starts at \(range.start), not on a 64 KiB qcow2 cluster; restore it raw", exitStatus: .invalidParameter)
            }
            if let status = try FileSystem.statusIfExists(request.targetPath), status.isBlockDevice {
                throw EngineError(code: "InvalidParameter.Format", "a qcow2 image is a file; \(request.targetPath) is a block device", exitStatus: .invalidParameter)
            }
            layout = try qcow2Layout(snapshot: snapshot, range: range)
        }
        let target = try Target.open(request.targetPath, size: range.count, force: request.force, layout: layout)
        do {
            let progress = Progress(label: "restore", total: range.count, observer: request.progress)
            let chunkSize = snapshot.chunkSize
            let runs = WorkPlan.runs(dataRanges: range.count > 0 ? [range] : [],
                                     chunkSize: chunkSize, maxChunks: UInt64(max(1, Snapshotter.runBytes / Int(chunkSize))))
            let work = RestoreWork(snapshot: snapshot, index: index, packs: packs, target: target, range: range, runs: runs, progress: progress)
            try runParallel(workers: min(request.workers, max(runs.count, 1)), queue: WorkQueue(count: runs.count), progress: progress) { _, queue in
                try work.run(queue)
            }
            var result = RestoreResult(record: record, targetPath: target.finalPath, bytesWritten: work.written.load(ordering: .relaxed),
                                       seconds: 0)
            if request.verify {
                try target.file.sync()
                try verify(snapshot: snapshot, file: target.file, isBlockDevice: target.isBlockDevice, range: range,
                           index: index, packs: packs, request: request)
                result.verified = true
            }
            try target.commit()
            result.seconds = progress.elapsedSeconds
            return result
        } catch {
            target.abandon()
            throw error
        }
    }

    /// An in-place restore up to the point where it writes: the locks, the snapshot, the
    /// chunk index, and the target opened exclusively (a disk in use is refused here,
    /// `Target.InUse`). `run` then compares and writes; a caller can answer in between.
    public func admitInPlace(_ request: RestoreRequest) throws -> AdmittedRestore {
        let lock = try repository.lock(.shared, for: "restore")
        let readers = try repository.readersLock()
        let snapshot = try OpenedSnapshot.open(request.snapshot, in: repository)
        let range = try snapshot.byteRange(partition: request.partition)
        guard !Qcow2Image.isQcow2(request.targetPath) else {
            throw EngineError(code: "InvalidParameter.Format", "\(request.targetPath) is a qcow2 image: --in-place writes raw disks (restore to a new qcow2 file with --format qcow2)", exitStatus: .invalidParameter)
        }
        let target = try InPlaceTarget.open(request.targetPath, size: range.count, force: request.force, dryRun: request.dryRun)
        let index = try ChunkLocator.open(repository)
        TestHooks.pause(at: "restore-after-index")
        let packs = PackFiles(repository: repository, index: index)
        return AdmittedRestore(restorer: self, request: request, snapshot: snapshot, range: range, target: target,
                               index: index, packs: packs, locks: [lock, readers])
    }

    fileprivate func restoreInPlace(_ request: RestoreRequest, snapshot: OpenedSnapshot, range: ByteRange, target: InPlaceTarget,
                                    index: ChunkLocator, packs: PackFiles) throws -> RestoreResult {
        let progress = Progress(label: request.dryRun ? "compare" : "restore in place", total: range.count, observer: request.progress)
        let writer = request.dryRun ? nil : DirectWriter(file: target.file)
        let work = InPlaceWork(snapshot: snapshot, index: index, packs: packs, file: target.file, writer: writer,
                               isBlockDevice: target.isBlockDevice, range: range, progress: progress)
        try work.run(workers: request.workers)
        var result = RestoreResult(record: snapshot.record, targetPath: target.file.path,
                                   bytesWritten: work.written.load(ordering: .relaxed), seconds: 0)
        result.inPlace = true
        result.dryRun = request.dryRun
        result.bytesExamined = work.examined.load(ordering: .relaxed)
        result.chunksDiffering = work.differingChunks.load(ordering: .relaxed)
        result.bytesDiffering = work.differingBytes.load(ordering: .relaxed)
        if !target.isBlockDevice && target.size != range.count {
            result.resizedFrom = target.size
            if !request.dryRun { try target.file.truncate(to: range.count) }
        }
        if !request.dryRun {
            try target.file.sync()
            if request.verify {
                try verify(snapshot: snapshot, file: target.file, isBlockDevice: target.isBlockDevice, range: range,
                           index: index, packs: packs, request: request)
                result.verified = true
            }
        }
        result.seconds = progress.elapsedSeconds
        return result
    }

    /// The qcow2 clusters that hold data: those of every non-zero chunk in `range`.
    private func qcow2Layout(snapshot: OpenedSnapshot, range: ByteRange) throws -> Qcow2Layout {
        let cs = Qcow2Layout.clusterSize
        var allocated: [UInt64] = []
        let chunks = range.start / snapshot.chunkSize..<(range.end + snapshot.chunkSize - 1) / snapshot.chunkSize
        try snapshot.fixed.forEach(chunks: chunks) { c, digest in
            guard !digest.isZero else { return }
            let chunk = snapshot.chunkRange(c)
            let lower = max(chunk.start, range.start) - range.start, upper = min(chunk.end, range.end) - range.start
            guard lower < upper else { return }
            var cluster = lower / cs
            while cluster * cs < upper {
                if allocated.last.map({ $0 < cluster }) ?? true { allocated.append(cluster) }
                cluster += 1
            }
        }
        return Qcow2Layout(virtualSize: range.count, allocated: allocated)
    }

    /// Reads the written target back from the disk (its cached pages dropped first) and
    /// compares every chunk with the snapshot.
    private func verify(snapshot: OpenedSnapshot, file: OpenFile, isBlockDevice: Bool, range: ByteRange,
                        index: ChunkLocator, packs: PackFiles, request: RestoreRequest) throws {
        file.dropCache()
        let check = InPlaceWork(snapshot: snapshot, index: index, packs: packs, file: file, writer: nil, isBlockDevice: isBlockDevice,
                                range: range, progress: Progress(label: "verify", total: range.count, observer: request.progress))
        try check.run(workers: request.workers)
        let bad = check.differingChunks.load(ordering: .relaxed)
        guard bad == 0 else {
            throw EngineError(code: "Restore.VerifyFailed", "\(file.path) differs from snapshot \(snapshot.record.snapshotId) in \(bad) chunks after the restore (\(ByteFormat.human(check.differingBytes.load(ordering: .relaxed)))): the disk did not keep what was written", exitStatus: .corrupt)
        }
    }
}

/// An existing disk restored in place: a regular file or a block device, not in use.
struct InPlaceTarget {
    let file: OpenFile
    let isBlockDevice: Bool
    /// Its size before the restore.
    let size: UInt64

    static func open(_ path: String, size needed: UInt64, force: Bool, dryRun: Bool) throws -> InPlaceTarget {
        let path = FileSystem.absolutePath(path)
        guard let status = try FileSystem.statusIfExists(path) else {
            throw EngineError(code: "Target.NotFound", "\(path) does not exist; --in-place restores onto an existing disk", exitStatus: .notFound)
        }
        if status.isBlockDevice {
            let users = DeviceUse.users(ofDevice: status.representedDevice)
            if !users.isEmpty && !force && !dryRun {
                throw EngineError.targetInUse("\(path) is in use (\(users.joined(separator: "; "))); unmount it first or pass --force")
            }
            let (file, size) = try Target.openDevice(path, mode: dryRun ? .readOnly : [.readWrite, .exclusive], needed: needed)
            return InPlaceTarget(file: file, isBlockDevice: true, size: size)
        }
        guard status.isRegularFile else {
            throw EngineError.targetExists("\(path) is neither a regular file nor a block device")
        }
        let loops = DeviceUse.loopDevices(backedBy: status)
        if !loops.isEmpty && !force && !dryRun {
            throw EngineError.targetInUse("\(path) is in use: it backs \(loops.joined(separator: ", ")); detach it (losetup -d) first or pass --force")
        }
        guard status.size >= needed || force else {
            throw EngineError.targetTooSmall("\(path) is \(status.size) bytes; the snapshot needs \(needed) (pass --force to grow it)")
        }
        let file = try OpenFile(path: path, mode: dryRun ? .readOnly : .readWrite)
        if !dryRun && status.size < needed { try file.truncate(to: needed) }
        return InPlaceTarget(file: file, isBlockDevice: false, size: status.size)
    }
}

/// Where a restore writes. Data goes through a `DirectWriter`: a restore writes each byte
/// once and never reads it back, so the page-cache copy only costs CPU (half a second of
/// kernel time per GiB measured here), evicts what the machine was using, and leaves
/// gigabytes of dirty pages for the final fsync. The last piece of an odd-sized disk and a
/// partition that does not start on a 4 KiB boundary go through the page cache.
final class Target: Sendable {
    let finalPath: String
    let file: OpenFile
    let writer: DirectWriter
    let isBlockDevice: Bool
    /// Set for a qcow2 target: disk offsets are translated to its data clusters.
    let layout: Qcow2Layout?

    private init(finalPath: String, file: OpenFile, isBlockDevice: Bool, layout: Qcow2Layout? = nil) {
        self.finalPath = finalPath
        self.file = file
        self.isBlockDevice = isBlockDevice
        self.layout = layout
        writer = DirectWriter(file: file)
    }

    /// Where target byte `offset` (of the restored disk) is in the file. A qcow2 target
    /// stores consecutive allocated clusters back to back, so a run of data chunks stays one
    /// contiguous write.
    func fileOffset(_ offset: UInt64) -> UInt64 {
        guard let layout else { return offset }
        return layout.hostOffset(ofCluster: offset / Qcow2Layout.clusterSize)! + offset % Qcow2Layout.clusterSize
    }

    static func open(_ path: String, size: UInt64, force: Bool, layout: Qcow2Layout? = nil) throws -> Target {
        let finalPath = FileSystem.absolutePath(path)
        if let status = try FileSystem.statusIfExists(finalPath) {
            if status.isBlockDevice {
                guard force else {
                    throw EngineError.targetExists("\(finalPath) is a block device; restoring overwrites all of it (pass --force)")
                }
                let (file, _) = try openDevice(finalPath, mode: [.readWrite, .exclusive], needed: size)  // read back by --verify
                return Target(finalPath: finalPath, file: file, isBlockDevice: true)
            }
            guard status.isRegularFile else {
                throw EngineError.targetExists("\(finalPath) exists and is neither a regular file nor a block device")
            }
            guard force else { throw EngineError.targetExists("\(finalPath) exists (pass --force to replace it)") }
        }
        let directory = FileSystem.directoryName(of: finalPath)
        removeAbandonedPartials(of: finalPath)
        let base = finalPath.split(separator: "/").last.map(String.init) ?? "restore"
        let temporary = "\(directory)/.\(base).\(FileSystem.processID).\(UInt32.random(in: 0...UInt32.max)).\(partialSuffix)"
        let file = try OpenFile(path: temporary, mode: [.readWrite, .create, .exclusive], permissions: 0o600)
        do {
            if let layout {
                try layout.writeMetadata(to: file)
            } else {
                try file.truncate(to: size)  // a sparse file: unwritten ranges are holes
            }
        } catch {
            try? FileSystem.removeIfExists(temporary)
            throw error
        }
        return Target(finalPath: finalPath, file: file, isBlockDevice: false, layout: layout)
    }

    static let partialSuffix = "disksnap-partial"

    /// Removes `.NAME.PID.RANDOM.disksnap-partial` files that restores to `finalPath` killed
    /// before their rename left behind (their PID is gone).
    static func removeAbandonedPartials(of finalPath: String) {
        let directory = FileSystem.directoryName(of: finalPath)
        guard let base = finalPath.split(separator: "/").last, let names = try? FileSystem.listDirectory(directory) else { return }
        let prefix = ".\(base)."
        for name in names where name.hasPrefix(prefix) && name.hasSuffix("." + partialSuffix) {
            let middle = name.dropFirst(prefix.count).dropLast(partialSuffix.count + 1).split(separator: ".")
            guard middle.count == 2, let pid = Int32(middle[0]), UInt32(middle[1]) != nil, !FileSystem.processIsAlive(pid) else { continue }
            try? FileSystem.removeIfExists("\(directory)/\(name)")
        }
    }

    /// Opens a block device that must hold `needed` bytes; returns it and its size. With
    /// `O_EXCL`, EBUSY (mounted or held) becomes `Target.InUse` naming its users.
    static func openDevice(_ path: String, mode: OpenFile.Mode, needed: UInt64) throws -> (OpenFile, UInt64) {
        let opened = Result { () throws(SystemError) in try OpenFile(path: path, mode: mode) }
        if case .failure(let error) = opened, error.code == "IO.Busy" {
            let users = (try? FileSystem.status(path)).map { DeviceUse.users(ofDevice: $0.representedDevice) } ?? []
            throw EngineError.targetInUse("\(path) is in use (\(users.isEmpty ? "held by the kernel" : users.joined(separator: "; "))); unmount it first")
        }
        let file = try opened.get()
        let size = try BlockDevice.size(file)
        guard size >= needed else {
            throw EngineError.targetTooSmall("\(path) holds \(size) bytes; the snapshot needs \(needed)")
        }
        return (file, size)
    }

    func commit() throws {
        try file.sync()
        guard !isBlockDevice else { return }
        try FileSystem.rename(file.path, to: finalPath)
        try FileSystem.syncDirectory(FileSystem.directoryName(of: finalPath))
    }

    func abandon() {
        if !isBlockDevice { try? FileSystem.removeIfExists(file.path) }
    }
}

private final class RestoreWork: Sendable {
    let snapshot: OpenedSnapshot
    let index: ChunkLocator
    let packs: PackFiles
    let target: Target
    /// The disk bytes being restored; disk offset `range.start` lands at target offset 0.
    let range: ByteRange
    let runs: [ChunkRun]
    let progress: Progress
    let written = Atomic<UInt64>(0)

    init(snapshot: OpenedSnapshot, index: ChunkLocator, packs: PackFiles, target: Target, range: ByteRange, runs: [ChunkRun], progress: Progress) {
        self.snapshot = snapshot
        self.range = range
        self.index = index
        self.packs = packs
        self.target = target
        self.runs = runs
        self.progress = progress
    }

    var chunkSize: UInt64 { snapshot.chunkSize }

    /// The part of disk bytes `[start, start + length)` inside `range`.
    func clipped(_ start: UInt64, _ length: UInt64) -> ByteRange? {
        let lower = max(start, range.start), upper = min(start + length, range.end)
        return lower < upper ? ByteRange(start: lower, end: upper) : nil
    }

    func run(_ queue: WorkQueue) throws {
        let reader = ChunkReader(index: index, packs: packs)
        let buffer = WorkPlan.allocateRunBuffer(runs, chunkSize: chunkSize)
        defer { buffer.deallocate() }
        while let i = queue.take() {
            let run = runs[i]
            let digests = try snapshot.fixed.entries(first: run.first, count: Int(run.end - run.first))
            // 1. Every data chunk of the run into its place in `buffer`.
            try snapshot.readInStoreOrder(digests.indices.filter { !digests[$0].isZero }, first: run.first, digests: digests,
                                          reader: reader) { c in
                let length = Int(snapshot.chunkRange(run.first + UInt64(c)).count)
                return UnsafeMutableRawBufferPointer(rebasing: buffer[c * Int(chunkSize)..<c * Int(chunkSize) + length])
            }
            // 2. Consecutive data chunks are written with one pwrite; consecutive zero chunks
            //    on a device are zeroed with one BLKZEROOUT; in a file they stay holes.
            var pendingStart: UInt64? = nil, pendingLength = 0, pendingFrom = 0
            var zeroStart: UInt64? = nil, zeroLength: UInt64 = 0
            func flush() throws {
                guard let start = pendingStart, pendingLength > 0 else { return }
                if let clip = clipped(start, UInt64(pendingLength)) {
                    let from = pendingFrom + Int(clip.start - start)
                    try target.writer.write(UnsafeRawBufferPointer(rebasing: buffer[from..<from + Int(clip.count)]), at: target.fileOffset(clip.start - range.start))
                    written.wrappingAdd(clip.count, ordering: .relaxed)
                }
                pendingStart = nil
                pendingLength = 0
            }
            func flushZeros() throws {
                guard let start = zeroStart, zeroLength > 0 else { return }
                if let clip = clipped(start, zeroLength) {
                    try BlockDevice.zeroOut(target.file, offset: clip.start - range.start, length: clip.count)
                }
                zeroStart = nil
                zeroLength = 0
            }
            for (c, digest) in digests.enumerated() {
                let offset = (run.first + UInt64(c)) * chunkSize
                let length = Int(min(chunkSize, snapshot.size - offset))
                if digest.isZero {
                    try flush()
                    if target.isBlockDevice {
                        if zeroStart == nil { zeroStart = offset }
                        zeroLength += UInt64(length)
                    }
                    continue
                }
                try flushZeros()
                if pendingStart == nil {
                    pendingStart = offset
                    pendingFrom = c * Int(chunkSize)
                }
                pendingLength += length
            }
            try flush()
            try flushZeros()
            if let done = clipped(run.first * chunkSize, min(run.end * chunkSize, snapshot.size) - run.first * chunkSize) {
                progress.add(done.count)
            }
        }
    }
}
