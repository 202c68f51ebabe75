import Synchronization
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog

public struct RestoreRequest: Sendable {
    public var snapshot: String
    public var targetPath: String
    public var force = false
    /// Restore only this partition (its byte range from the identity recorded at snapshot time).
    public var partition: Int?
    public var showProgress = false
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
}

/// Writes a snapshot's bytes to a file or block device, in parallel, verifying every chunk.
///
/// A file target is built under a temporary name in the target's directory and renamed
/// into place only when complete and fsynced: a half-restored file never has the final
/// name. Zero chunks are holes in files and BLKZEROOUT ranges on devices.
public struct Restorer {
    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    public func restore(_ request: RestoreRequest) throws -> RestoreResult {
        let lock = try repository.lock(.shared, for: "restore")
        defer { withExtendedLifetime(lock) {} }
        let record = try Catalog(repository: repository).find(request.snapshot)
        guard record.status == .accomplished else {
            throw EngineError.snapshotNotRestorable("snapshot \(record.snapshotId) is \(record.status.rawValue); only an accomplished snapshot can be restored")
        }
        let fixed = try FixedIndexReader(path: repository.fixedIndexPath(record.snapshotId))
        guard fixed.header.diskSize == record.sourceSize, fixed.header.snapshotID == record.snapshotId.rawValue else {
            throw FormatError(file: fixed.file.path, "does not belong to snapshot \(record.snapshotId) (size or id differ)")
        }
        let range = try byteRange(of: record, partition: request.partition)
        let index = try ChunkIndex.load(from: repository)
        let target = try Target.open(request.targetPath, size: range.count, force: request.force)
        do {
            let progress = Progress(label: "restore", total: range.count, visible: request.showProgress)
            let chunkSize = UInt64(record.chunkSize)
            let runs = WorkPlan.runs(dataRanges: range.count > 0 ? [range] : [],
                                     chunkSize: chunkSize, maxChunks: UInt64(max(1, Snapshotter.runBytes / Int(chunkSize))))
            let work = RestoreWork(record: record, fixed: fixed, index: index, packs: PackFiles(repository: repository, index: index),
                                   target: target, range: range, runs: runs, chunkSize: chunkSize, progress: progress)
            try runParallel(workers: min(request.workers, max(runs.count, 1)), queue: WorkQueue(count: runs.count), progress: progress) { _, queue in
                try work.run(queue)
            }
            try target.commit()
            return RestoreResult(record: record, targetPath: target.finalPath, bytesWritten: work.written.load(ordering: .relaxed),
                                 seconds: progress.elapsedSeconds)
        } catch {
            target.abandon()
            throw error
        }
    }
}

extension Restorer {
    /// The bytes of the disk to restore: all of it, or one partition of the recorded table.
    func byteRange(of record: SnapshotRecord, partition number: Int?) throws -> ByteRange {
        guard let number else { return ByteRange(start: 0, end: record.sourceSize) }
        guard let identity = record.identity, identity.partitionTableType != nil else {
            throw EngineError(code: "InvalidParameter.Partition", "snapshot \(record.snapshotId) recorded no partition table", exitStatus: .invalidParameter)
        }
        guard let part = identity.partitions.first(where: { $0.number == number }) else {
            throw EngineError(code: "InvalidParameter.Partition", "snapshot \(record.snapshotId) has no partition \(number) (it has \(identity.partitions.map { String($0.number) }.joined(separator: ", ")))", exitStatus: .invalidParameter)
        }
        guard part.start + part.size <= record.sourceSize else {
            throw EngineError(code: "InvalidParameter.Partition", "partition \(number) ends past the disk", exitStatus: .invalidParameter)
        }
        return ByteRange(start: part.start, end: part.start + part.size)
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

    private init(finalPath: String, file: OpenFile, isBlockDevice: Bool) {
        self.finalPath = finalPath
        self.file = file
        self.isBlockDevice = isBlockDevice
        writer = DirectWriter(file: file)
    }

    static func open(_ path: String, size: UInt64, force: Bool) throws -> Target {
        let finalPath = FileSystem.absolutePath(path)
        if let status = try FileSystem.statusIfExists(finalPath) {
            if status.isBlockDevice {
                guard force else {
                    throw EngineError.targetExists("\(finalPath) is a block device; restoring overwrites all of it (pass --force)")
                }
                // O_EXCL on a block device: EBUSY while it is mounted or otherwise held.
                let opened = Result { () throws(SystemError) in try OpenFile(path: finalPath, mode: [.writeOnly, .exclusive]) }
                if case .failure(let error) = opened, error.code == "IO.Busy" {
                    throw EngineError.sourceInUse("\(finalPath) is in use (mounted or held by another device); unmount it first")
                }
                let file = try opened.get()
                let deviceSize = try BlockDevice.size(file)
                guard deviceSize >= size else {
                    throw EngineError.targetTooSmall("\(finalPath) holds \(deviceSize) bytes; the snapshot needs \(size)")
                }
                return Target(finalPath: finalPath, file: file, isBlockDevice: true)
            }
            guard status.isRegularFile else {
                throw EngineError.targetExists("\(finalPath) exists and is neither a regular file nor a block device")
            }
            guard force else { throw EngineError.targetExists("\(finalPath) exists (pass --force to replace it)") }
        }
        let directory = FileSystem.directoryName(of: finalPath)
        let temporary = directory + "/." + FileSystem.uniqueTemporaryName(for: finalPath).replacingOccurrences(of: ".tmp", with: ".disksnap-partial")
        let file = try OpenFile(path: temporary, mode: [.writeOnly, .create, .exclusive], permissions: 0o600)
        do {
            try file.truncate(to: size)  // a sparse file: unwritten ranges are holes
        } catch {
            try? FileSystem.removeIfExists(temporary)
            throw error
        }
        return Target(finalPath: finalPath, file: file, isBlockDevice: false)
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
    let record: SnapshotRecord
    let fixed: FixedIndexReader
    let index: ChunkIndex
    let packs: PackFiles
    let target: Target
    /// The disk bytes being restored; disk offset `range.start` lands at target offset 0.
    let range: ByteRange
    let runs: [ChunkRun]
    let chunkSize: UInt64
    let progress: Progress
    let written = Atomic<UInt64>(0)

    init(record: SnapshotRecord, fixed: FixedIndexReader, index: ChunkIndex, packs: PackFiles, target: Target,
         range: ByteRange, runs: [ChunkRun], chunkSize: UInt64, progress: Progress) {
        self.range = range
        self.record = record
        self.fixed = fixed
        self.index = index
        self.packs = packs
        self.target = target
        self.runs = runs
        self.chunkSize = chunkSize
        self.progress = progress
    }

    /// The part of disk bytes `[start, start + length)` inside `range`.
    func clipped(_ start: UInt64, _ length: UInt64) -> ByteRange? {
        let lower = max(start, range.start), upper = min(start + length, range.end)
        return lower < upper ? ByteRange(start: lower, end: upper) : nil
    }

    func run(_ queue: WorkQueue) throws {
        let reader = ChunkReader(index: index, packs: packs)
        let buffer = WorkPlan.allocateRunBuffer(runs, chunkSize: chunkSize)
        defer { buffer.deallocate() }
        var reads: [(chunk: Int, location: ChunkLocation)] = []
        while let i = queue.take() {
            let run = runs[i]
            let digests = try fixed.entries(first: run.first, count: Int(run.end - run.first))
            // 1. Every data chunk of the run into its place in `buffer`, in the order the
            //    store holds them: a block shared by several chunks (and by several snapshots
            //    of the same region, interleaved) is decompressed once per run.
            func naming<T>(chunk c: Int, _ body: () throws -> T) throws -> T {
                do {
                    return try body()
                } catch let error as any CodedError {
                    throw ContextError(underlying: error, context: "snapshot \(record.snapshotId), chunk at offset \((run.first + UInt64(c)) * chunkSize)")
                }
            }
            reads.removeAll(keepingCapacity: true)
            for (c, digest) in digests.enumerated() where !digest.isZero {
                reads.append((c, try naming(chunk: c) { try reader.locate(digest) }))
            }
            reads.sort { ($0.location.pack, $0.location.offset, $0.location.blockOffset) < ($1.location.pack, $1.location.offset, $1.location.blockOffset) }
            for (c, location) in reads {
                let offset = (run.first + UInt64(c)) * chunkSize
                let length = Int(min(chunkSize, record.sourceSize - offset))
                let slot = UnsafeMutableRawBufferPointer(rebasing: buffer[c * Int(chunkSize)..<c * Int(chunkSize) + length])
                try naming(chunk: c) { try reader.read(digests[c], at: location, into: slot) }
            }
            // 2. Consecutive data chunks are written with one pwrite; consecutive zero chunks
            //    on a device are zeroed with one BLKZEROOUT; in a file they stay holes.
            var pendingStart: UInt64? = nil, pendingLength = 0, pendingFrom = 0
            var zeroStart: UInt64? = nil, zeroLength: UInt64 = 0
            func flush() throws {
                guard let start = pendingStart, pendingLength > 0 else { return }
                if let clip = clipped(start, UInt64(pendingLength)) {
                    let from = pendingFrom + Int(clip.start - start)
                    try target.writer.write(UnsafeRawBufferPointer(rebasing: buffer[from..<from + Int(clip.count)]), at: clip.start - range.start)
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
                let length = Int(min(chunkSize, record.sourceSize - offset))
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
            if let done = clipped(run.first * chunkSize, min(run.end * chunkSize, record.sourceSize) - run.first * chunkSize) {
                progress.add(done.count)
            }
        }
    }
}
