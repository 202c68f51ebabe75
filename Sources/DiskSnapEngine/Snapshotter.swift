import Foundation
import Synchronization
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog
import DiskSnapQcow2
import DiskSnapQemu

/// What a caller asks of `create`.
public struct CreateRequest: Sendable {
    /// A disk id, a disk name, or a path (registered on first use).
    public var source: String
    public var name: String
    public var description: String = ""
    public var tags: [Tag] = []
    public var clientToken: ClientToken?
    /// Set only by the automatic-snapshot runner: allows the reserved `auto` prefix.
    public var automatic = false
    public var allowLive = false
    /// nil: a qcow2 image is recognized by its header.
    public var format: SourceFormat?
    /// False refuses a qcow2 image that has a backing file.
    public var allowBacking = true
    /// Snapshot even when another disk now sits at the registered path.
    public var force = false
    public var progress: (any ProgressObserver)?
    public var workers = Workers.defaultCount
    /// Set for a disk a running QEMU has open: read its point-in-time view.
    public var qemu: QemuTarget?
    /// Set for a disk of a libvirt domain (`--domain`): read through libvirt's backup API
    /// while the domain runs, the image itself when it is shut off. `source` may then be
    /// empty: the disk's source in the domain.
    public var libvirt: LibvirtTarget?
    /// An image file on a filesystem that can reflink is cloned (`FICLONE`) and the clone
    /// read: one instant, whoever writes the image. False reads the image itself.
    public var clone = true
    /// Keep the clone until the next snapshot of the disk, which compares its extents with
    /// its own clone's and reads only what differs (raw images).
    public var keepClone = false
    /// The group this snapshot is taken in, with the other disks of its instance (`GroupId`).
    public var groupId: String?

    public init(source: String, name: String) {
        self.source = source
        self.name = name
    }

    /// What makes two requests "the same parameters" for a client token.
    var fingerprint: String {
        let tagText = tags.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: "\u{1}")
        let text = [name, description, tagText].joined(separator: "\u{0}")
        return Array(text.utf8).withUnsafeBytes { ChunkDigest(hashing: $0) }.hex
    }
}

/// A running QEMU that has the disk open (docs/DESIGN.md, "Running VMs").
public struct QemuTarget: Sendable {
    /// Its QMP socket (`-qmp unix:PATH,server=on,wait=off`).
    public var qmpSocket: String
    /// The block node; nil: the node that has the image open.
    public var node: String?
    /// The Unix socket of an NBD server this QEMU already runs; nil: disksnap starts one.
    public var nbdSocket: String?
    /// `--freeze`: the guest agent's socket, and the longest the guest may stay frozen.
    public var guestAgent: String?
    public var freezeLimit: Double = 30

    public init(qmpSocket: String, node: String? = nil, nbdSocket: String? = nil) {
        self.qmpSocket = qmpSocket
        self.node = node
        self.nbdSocket = nbdSocket
    }
}

/// What `create` did: a new snapshot, or the one an earlier request with the same client
/// token made.
public struct CreateResult: Sendable {
    public var record: SnapshotRecord
    public var reused: Bool
    /// The index compaction that followed the snapshot (nothing when none was due or a gc
    /// held the index), and why it failed if it did: the snapshot stands either way.
    public var compaction = CompactionResult()
    public var compactionError: String?
    /// What went wrong after the data was read, without making the snapshot wrong
    /// (tearing down a QEMU view, removing a bitmap no longer needed).
    public var warnings: [String] = []
    /// What killed runs had left (objects in QEMU, clones beside the image), removed first.
    public var removedStale: [String] = []
    /// What the run did besides the snapshot (kept clones removed, with the space they held).
    public var notes: [String] = []
}

/// Takes a snapshot: the pipeline of docs/DESIGN.md ("Snapshot pipeline").
///
/// Each worker takes a run of consecutive chunks, reads it with one pread into its own
/// buffer, and for each chunk: zero check -> SHA-256 -> claim in the store -> zstd -> append
/// to a pack. Entries go to the fixed index file at their position. Memory is workers x
/// (run buffer + compression buffer), whatever the disk's size.
public struct Snapshotter: Sendable {
    /// Bytes one worker reads at once (rounded to whole chunks).
    public static let runBytes = 4 << 20
    /// Raw bytes of new chunks compressed together as one block (docs/PERFORMANCE.md,
    /// "Blocks"): 4 MiB blocks store 3% less but cost a restore 40% more CPU, as a block
    /// must be decompressed whole for any one of its chunks.
    public static let blockBytes = 1 << 20
    /// Runs ahead of a read whose page-cache residency is noted before the read: readahead
    /// reaches up to twice the device's `read_ahead_kb` past a sequential read (16 MiB for
    /// the 8 MiB seen here), so 8 runs of 4 MiB cover it with room to spare.
    static let readaheadRuns = 8
    /// What a worker reading over NBD keeps in flight at most (see `Pipeline.work`).
    static let readAheadBytes = 8 << 20

    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    public var rules: RuleSet { (Profile(rawValue: repository.config.profile ?? "ecs") ?? .ecs).rules }

    /// Takes a snapshot: admits the request, then reads the disk.
    public func create(_ request: CreateRequest) throws -> CreateResult {
        // A running QEMU is connected to, and its commands checked, while the request is
        // admitted (its round trips wait on QEMU); a failure there is reported after any of
        // the admission's own, as if it came later.
        let connecting = request.qemu.map { qemu in Concurrent { try PointInTimeView.connect(qmpSocket: qemu.qmpSocket) } }
        switch try admit(request) {
        case .reused(let record): return CreateResult(record: record, reused: true)
        case .admitted(let admitted):
            admitted.qemuConnection = connecting
            return try admitted.run()
        }
    }

    /// Everything `create` checks before it reads a byte of data: the profile's rules, the
    /// client token, the disk's lock, quotas, the disk's identity; then the snapshot's record,
    /// `progressing`, which counts for every later rule check. The locks stay held by what it
    /// returns until that has run (or is let go of, which marks the record failed).
    public func admit(_ request: CreateRequest) throws -> Admission {
        let repositoryLock = try repository.lock(.shared, for: "create")
        PhaseTimer.mark("create: repository opened")
        let rules = self.rules
        // Every rule is checked before any data is read.
        try rules.validateName(request.name, automatic: request.automatic)
        try rules.validateDescription(request.description)
        try Tag.validate(request.tags)

        let catalog = Catalog(repository: repository)
        var catalogLock: HeldLock? = try repository.lockCatalog()
        // A libvirt domain's disk: found in the domain (and checked against the source given).
        var libvirtDisk: LibvirtDiskHandle?
        let disk: DiskRecord
        if let target = request.libvirt {
            if request.source.isEmpty {
                let handle = try LibvirtDiskHandle.locate(target, imagePath: nil)
                disk = try DiskRegistry(repository: repository).resolveOrRegister(handle.disk.sourcePath!)
                libvirtDisk = handle
            } else {
                disk = try DiskRegistry(repository: repository).resolveOrRegister(request.source)
                libvirtDisk = try LibvirtDiskHandle.locate(target, imagePath: disk.path)
            }
        } else {
            disk = try DiskRegistry(repository: repository).resolveOrRegister(request.source)
        }
        var notes: [String] = []
        if let handle = libvirtDisk, !handle.running {
            // Nothing runs the disk: its image is read directly (cloned where it can be).
            notes.append("domain \(handle.target.domain) is not running: read its disk \(handle.disk.target) (\(disk.path)) directly")
            libvirtDisk = nil
        }
        let throughView = request.qemu != nil || libvirtDisk != nil
        let records = try catalog.records(markingDeadFailed: true).records
        if let token = request.clientToken?.rawValue,
           let prior = records.first(where: { $0.clientToken == token && $0.status != .failed }) {
            guard prior.requestFingerprint == request.fingerprint && prior.sourceDiskId == disk.diskId else {
                throw CatalogError.invalid("IdempotentParameterMismatch", "client token '\(token)' was used for snapshot \(prior.snapshotId) with other parameters")
            }
            return .reused(prior)
        }
        guard let diskLock = try repository.tryLock(name: "disk-\(disk.diskId.rawValue)") else {
            throw CatalogError.busy("IncorrectDiskStatus.CreatingSnapshot", "a snapshot of disk \(disk.diskId) (\(disk.diskName)) is being created; try again later")
        }
        let live = records.filter { $0.status != .failed }
        try QuotaPolicy.checkUniqueName(rules: rules, name: request.name, disk: disk, live: live)
        try QuotaPolicy.check(rules: rules, disk: disk, disks: try DiskRegistry(repository: repository).disks(),
                              live: live, repositoryCap: repository.config.maxSnapshots)

        // Is it still the same disk? (A few sectors of metadata, read before any data.) A disk
        // QEMU writes is probed through its point-in-time view instead, once it exists: its
        // file may be mid-update.
        let identityCheck = IdentityCheck(repository: repository, disk: disk, force: request.force)
        var identity: DiskIdentity?
        var identityChange: String?
        if !throughView {
            let probed = try GuestProbe.identify(path: disk.path, qcow2: request.format.map { $0 == .qcow2 }, allowBacking: request.allowBacking)
            identityChange = try identityCheck.check(probed)
            identity = probed
        }

        let id = SnapshotID.generate()
        guard let creationLock = try repository.tryLock(name: Catalog.creationLockName(id)) else {
            throw CatalogError.busy("IncorrectSnapshotStatus", "snapshot id \(id) is locked")
        }
        guard let sourceStatus = try FileSystem.statusIfExists(disk.path) else { throw EngineError.sourceNotFound(disk.path) }
        var record = SnapshotRecord(snapshotId: id, snapshotName: request.name, description: request.description,
                                    sourcePath: disk.path, sourceKind: sourceStatus.isBlockDevice ? .blockDevice : .file,
                                    sourceSize: sourceStatus.size, chunkSize: repository.config.chunkSize.bytes)
        record.sourceDiskId = disk.diskId
        record.sourceDiskType = disk.diskType
        record.tags = request.tags.map { TagPair(key: $0.key, value: $0.value) }
        record.clientToken = request.clientToken?.rawValue
        record.requestFingerprint = request.fingerprint
        record.automatic = request.automatic
        record.groupId = request.groupId
        record.identity = identity
        record.identityChange = identityChange
        try catalog.save(record)
        catalogLock = nil  // the record now counts for every later rule check
        _ = catalogLock
        PhaseTimer.mark("create: admitted (rules, locks, record)")
        return .admitted(AdmittedCreate(
            snapshotter: self, request: request, record: record, disk: disk, libvirtDisk: libvirtDisk,
            live: live, notes: notes, sourceStatus: sourceStatus, identityCheck: identityCheck,
            locks: [repositoryLock, diskLock, creationLock]))
    }

    enum CloneChanges { case changed([ByteRange]), full(String) }

    /// What changed since the previous snapshot, by the extents of its kept clone and of
    /// this run's clone; or why everything must be read.
    static func cloneChanges(previous: SnapshotRecord?, clone: ReflinkClone, raw: Bool, size: UInt64) throws -> CloneChanges {
        guard raw else { return .full("the image is qcow2: its file's extents are not guest offsets") }
        guard let previous else { return .full("no previous snapshot of this disk") }
        guard let kept = previous.keptClone else { return .full("the previous snapshot kept no clone") }
        guard kept.size == size else { return .full("the image's size changed") }
        let fd = open(kept.path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return .full("the previous snapshot's kept clone \(kept.path) cannot be opened (\(SystemError.current("open", kept.path).message))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return .full("the kept clone cannot be read") }
        guard UInt64(st.st_ino) == kept.inode, "\(st.st_ctim.tv_sec).\(st.st_ctim.tv_nsec)" == kept.changeTime, UInt64(st.st_size) == kept.size else {
            return .full("the previous snapshot's kept clone \(kept.path) was changed or replaced since")
        }
        let old: [FileExtentMap.Extent], new: [FileExtentMap.Extent]
        do {
            old = try FileExtentMap.extents(of: fd, path: kept.path)
            new = try clone.extents()
        } catch {
            return .full("the clones' extents cannot be mapped (\(error.message))")
        }
        return .changed(FileExtentMap.changedRanges(old: old, new: new, size: size))
    }

    static func describe(_ error: any Error) -> String { (error as? any CodedError)?.description ?? "\(error)" }

    /// Keeps the index's segment count bounded (`CompactionPolicy`) once the snapshot is
    /// committed, unless a gc holds the index (it compacts at its end). A failure leaves the
    /// segments as they were (docs/DESIGN.md, "Chunk index") and is reported, not thrown.
    func compactIndex(into result: inout CreateResult) {
        guard let gcLock = try? repository.tryLock(name: "gc") else { return }
        defer { withExtendedLifetime(gcLock) {} }
        do {
            result.compaction = try IndexCompactor.compact(repository)
        } catch let error as any CodedError {
            result.compactionError = error.description
        } catch {
            result.compactionError = "\(error)"
        }
    }

    /// Reads `source` into the repository. `previousIndex`, when given, opens the fixed index
    /// of `previous` (already being opened on another thread). `whenRead` is called once every
    /// read is done, before the packs and indexes are published.
    func run(source: Source, request: CreateRequest, record: inout SnapshotRecord, area: TemporaryArea,
             previous: SnapshotRecord?, previousIndex opening: (() -> FixedIndexReader?)? = nil, whenRead: () -> Void = {}) throws {
        let chunkSize = UInt64(repository.config.chunkSize.bytes)
        // Read after this snapshot's record was published: a gc that condemned packs before
        // then does not wait for this run, so the run must not rely on their chunks.
        let condemned = Set((try repository.gcState()?.condemnedPacks ?? []).compactMap(PackID.init(hex:)))
        let index = try ChunkLocator.open(repository, excluding: condemned)
        PhaseTimer.mark("create: chunk index opened")
        TestHooks.pause(at: "create-after-index")
        // A previous snapshot whose fixed index does not verify is not used (check reports it).
        let previousIndex = opening.map { $0() } ?? previous.flatMap { try? FixedIndexReader(repository, $0.snapshotId) }
        let writer = ChunkWriter(repository: repository, store: index, area: area, expectedChunks: record.chunkCount)
        let fixed = try FixedIndexBuilder(path: area.path("index.fidx"), diskSize: source.size, chunkSize: UInt32(chunkSize))
        let counters = Counters()
        var toRead: [ByteRange]
        if let changed = source.changedRanges, let previousIndex, previousIndex.header.diskSize == source.size,
           previousIndex.header.chunkSize == UInt32(chunkSize) {
            let extra = try Self.carryUnchanged(from: previousIndex, changed: changed, into: fixed, writer: writer,
                                                 verify: !condemned.isEmpty, diskSize: source.size, counters: counters)
            toRead = (changed + extra).sorted { $0.start < $1.start }
            record.changeTracking?.changedBytes = changed.reduce(0) { $0 + $1.count }
        } else {
            if source.changedRanges != nil {
                record.changeTracking?.baseSnapshotId = nil
                record.changeTracking?.fullReadReason = "the previous snapshot's fixed index does not verify (check reports it)"
            }
            TestHooks.pause(at: "create-full-read")
            toRead = try source.allDataRanges()
        }
        PhaseTimer.mark("create: previous snapshot's entries carried")
        let runs = WorkPlan.runs(dataRanges: toRead, chunkSize: chunkSize,
                                 maxChunks: UInt64(max(1, Self.runBytes / Int(chunkSize))))
        let totalToRead = runs.reduce(UInt64(0)) { $0 + min($1.end * chunkSize, source.size) - $1.first * chunkSize }
        let progress = Progress(label: "snapshot", total: totalToRead, observer: request.progress)
        let pipeline = Pipeline(source: source, writer: writer, fixed: fixed, previous: previousIndex, verifyPrevious: !condemned.isEmpty,
                                runs: runs, chunkSize: chunkSize,
                                compression: repository.config.compression, counters: counters, progress: progress,
                                cache: source.kind == .file && source.qcow2 == nil && source.view == nil ? PageCacheCourtesy(file: source.file) : nil)
        // Progress is written into the record every 250 ms tick (one small atomic write), for
        // `list`/`show` in other processes (of this host only, for a bucket: see writeRecord).
        let catalog = Catalog(repository: repository)
        var snapshotForProgress = record
        var lastSave = progress.elapsedSeconds
        let tick = {
            guard progress.elapsedSeconds - lastSave >= 0.2, totalToRead > 0 else { return }
            lastSave = progress.elapsedSeconds
            snapshotForProgress.progress = "\(progress.done.load(ordering: .relaxed) * 100 / totalToRead)%"
            try? catalog.save(snapshotForProgress, progressOnly: true)
        }
        try runParallel(workers: min(request.workers, max(runs.count, 1)), queue: WorkQueue(count: runs.count), progress: progress, tick: tick) { _, queue in
            try pipeline.work(queue)
        }
        pipeline.cache?.releaseHoles(after: source.dataRanges ?? [], size: source.size,
                                     reach: UInt64((Self.readaheadRuns + 1) * Self.runBytes))
        if let change = try source.changeSinceOpen() {
            if !request.allowLive {
                throw EngineError.sourceChanged("\(source.path) changed while it was read: \(change); the snapshot would not be one point in time (stop the writer or pass --allow-live)")
            }
            record.crashConsistent = false
        }
        if request.allowLive && source.kind == .blockDevice && !source.writableMounts().isEmpty {
            record.crashConsistent = false
        }
        PhaseTimer.mark("create: pipeline done")
        whenRead()
        // The fixed index is checksummed and made durable in the work area while the packs and
        // the segment are published; it is published after them ("Write order").
        let snapshotID = record.snapshotId, created = Int64(Date().timeIntervalSince1970)
        let finishing = Concurrent { try fixed.finish(snapshotID: snapshotID, createdUnixSeconds: created) }
        let summary: ChunkWriter.Summary
        do {
            summary = try writer.finish()
        } catch {
            _ = try? finishing.value()  // it writes into the work area, removed on the way out
            throw error
        }
        PhaseTimer.mark("create: packs and index segment published")
        let digest = try finishing.value()
        try fixed.publish(in: repository, snapshotID: snapshotID)
        record.fixedIndexDigest = digest.hex
        record.bytesRead = counters.bytesRead.load(ordering: .relaxed)
        record.zeroBytes = source.size - counters.nonZeroBytes.load(ordering: .relaxed)
        record.bytesStoredNew = summary.bytesStored
        record.chunksStoredNew = summary.chunksStored
        record.chunksUnchanged = counters.sameAsPrevious.load(ordering: .relaxed)
    }
}

extension Snapshotter {
    /// Change tracking's incremental: every entry of the previous snapshot goes into the new
    /// fixed index (those the changed ranges touch are overwritten when read). Returns the
    /// chunks that must be read anyway: while a gc has condemned packs, a carried chunk that
    /// the (filtered) index lacks may live only in a condemned pack.
    static func carryUnchanged(from previous: FixedIndexReader, changed: [ByteRange], into fixed: FixedIndexBuilder,
                               writer: ChunkWriter, verify: Bool, diskSize: UInt64, counters: Counters) throws -> [ByteRange] {
        let chunkSize = UInt64(previous.header.chunkSize)
        // The chunks the changed ranges touch, merged (runs as long as the disk: never cut).
        let dirty = WorkPlan.runs(dataRanges: changed, chunkSize: chunkSize, maxChunks: max(1, previous.header.chunkCount))
        var next = 0
        var extra: [ByteRange] = []
        var first: UInt64 = 0
        let count = previous.header.chunkCount
        let entrySize = FixedIndexHeader.entrySize
        // The entries go over as bytes, a batch at a time; a digest is made only to look one up.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: FixedIndexReader.entriesPerRead * entrySize, alignment: 8)
        defer { buffer.deallocate() }
        while first < count {
            let batch = Int(min(UInt64(FixedIndexReader.entriesPerRead), count - first))
            let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[..<(batch * entrySize)])
            try previous.readEntries(first: first, into: bytes)
            for i in 0..<batch {
                let entry = UnsafeRawBufferPointer(rebasing: bytes[i * entrySize..<(i + 1) * entrySize])
                if isAllZero(entry) { continue }  // a zero chunk
                let chunk = first + UInt64(i)
                while next < dirty.count, dirty[next].end <= chunk { next += 1 }
                if next < dirty.count, dirty[next].first <= chunk { continue }
                let start = chunk * chunkSize, end = min(start + chunkSize, diskSize)
                if verify, try !writer.store.contains(ChunkDigest(bytes: entry)) {
                    extra.append(ByteRange(start: start, end: end))
                    continue
                }
                counters.sameAsPrevious.wrappingAdd(1, ordering: .relaxed)
                counters.nonZeroBytes.wrappingAdd(end - start, ordering: .relaxed)
            }
            try fixed.write(entries: UnsafeRawBufferPointer(bytes), firstChunk: first)
            first += UInt64(batch)
        }
        return extra
    }
}

/// A value handed to one other thread, which alone uses it until it is done.
struct Unshared<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

final class Counters: Sendable {
    let bytesRead = Atomic<UInt64>(0)
    let nonZeroBytes = Atomic<UInt64>(0)
    let sameAsPrevious = Atomic<UInt64>(0)
}

/// The per-chunk work, shared by the workers; each worker owns its buffers.
private struct Pipeline: Sendable {
    let source: Source
    let writer: ChunkWriter
    let fixed: FixedIndexBuilder
    /// The disk's previous snapshot: a chunk whose digest equals the entry at the same
    /// position there is stored already (an accomplished snapshot's chunks are all indexed),
    /// so it needs no index lookup and no claim: the common case of an incremental.
    let previous: FixedIndexReader?
    /// While a gc has condemned packs, a chunk equal to the previous snapshot's must also
    /// be in the (filtered) index: it may live only in a condemned pack.
    let verifyPrevious: Bool
    let runs: [ChunkRun]
    let chunkSize: UInt64
    let compression: Compression
    let counters: Counters
    let progress: Progress
    /// For a file source: the page cache is left as the snapshot found it.
    let cache: PageCacheCourtesy?

    func work(_ queue: WorkQueue) throws {
        let maxChunks = WorkPlan.maxChunks(runs)
        let reader = try SourceReader(source)
        // Reading ahead needs more buffers: the next runs land there while one is worked
        // on. As many as fit in `Snapshotter.readAheadBytes`, at least two, at most 16.
        let runBytes = maxChunks * Int(chunkSize)
        let slots = reader.readsAhead ? min(16, max(2, Snapshotter.readAheadBytes / runBytes)) : 1
        let buffers = (0..<slots).map { _ in WorkPlan.allocateRunBuffer(runs, chunkSize: chunkSize) }
        defer {
            reader.close()  // before the buffers go: no reply may land in freed memory
            for buffer in buffers { buffer.deallocate() }
        }
        var entries = [UInt8](repeating: 0, count: maxChunks * ChunkDigest.byteCount)
        // The new chunks of a run are compressed together in blocks of up to 1 MiB.
        let packs = writer.makePackBuilder(compression: compression, blockCapacity: max(Snapshotter.blockBytes, Int(chunkSize)))

        func bounds(_ i: Int) -> (start: UInt64, end: UInt64) {
            (runs[i].first * chunkSize, min(runs[i].end * chunkSize, source.size))
        }
        func span(_ i: Int, _ slot: Int) -> UnsafeMutableRawBufferPointer {
            let (start, end) = bounds(i)
            return UnsafeMutableRawBufferPointer(rebasing: buffers[slot][..<Int(end - start)])
        }
        // Runs sent to the reader, oldest first (the order `wait` answers in), and free buffers.
        var inFlight: [(run: Int, slot: Int)] = []
        var free = Array((0..<slots).reversed())
        func fill() throws {
            while !free.isEmpty, let i = queue.take() {
                let slot = free.removeLast()
                if let cache {
                    // This run and those the readahead of this read may reach (see PageCacheCourtesy).
                    for j in i..<min(i + 1 + Snapshotter.readaheadRuns, runs.count) {
                        let (start, end) = bounds(j)
                        cache.note(j, offset: start, length: Int(end - start))
                    }
                }
                inFlight.append((i, slot))
                try reader.start(into: span(i, slot), at: bounds(i).start)
            }
        }

        try fill()
        while !inFlight.isEmpty {
            let (i, slot) = inFlight.removeFirst()
            try reader.wait()
            try fill()
            try process(i, span(i, slot), &entries, packs)
            free.append(slot)
            try fill()
        }
        try packs.finish()
    }

    /// Zero check, hash, claim and compress each chunk of run `i`, already read into `span`.
    private func process(_ i: Int, _ span: UnsafeMutableRawBufferPointer, _ entries: inout [UInt8], _ packs: PackBuilder) throws {
        let run = runs[i]
        let start = run.first * chunkSize, end = start + UInt64(span.count)
        let identity = writer.repository.chunkIdentity
        var before: [ChunkDigest] = []
        if let previous, run.first < previous.header.chunkCount {
            before = try previous.entries(first: run.first, count: Int(min(run.end, previous.header.chunkCount) - run.first))
        }
        counters.bytesRead.wrappingAdd(end - start, ordering: .relaxed)
        var nonZero: UInt64 = 0
        for c in 0..<Int(run.end - run.first) {
            let chunkStart = c * Int(chunkSize)
            let chunk = UnsafeRawBufferPointer(rebasing: span[chunkStart..<min(chunkStart + Int(chunkSize), span.count)])
            var digest = ChunkDigest.zero
            if !isAllZero(chunk) {
                nonZero += UInt64(chunk.count)
                digest = identity.digest(of: chunk)
                if c < before.count && before[c] == digest, try !verifyPrevious || writer.store.contains(digest) {
                    counters.sameAsPrevious.wrappingAdd(1, ordering: .relaxed)
                } else if try writer.claim(digest) {
                    try packs.add(digest, chunk)
                }
            }
            entries.withUnsafeMutableBytes { dst in
                digest.withBytes { UnsafeMutableRawBufferPointer(rebasing: dst[c * 32..<(c + 1) * 32]).copyMemory(from: $0) }
            }
        }
        try packs.endBlock()
        counters.nonZeroBytes.wrappingAdd(nonZero, ordering: .relaxed)
        try entries.withUnsafeBytes { try fixed.write(entries: UnsafeRawBufferPointer(rebasing: $0[..<(Int(run.end - run.first) * 32)]), firstChunk: run.first) }
        cache?.release(i, offset: start, length: span.count)
        progress.add(end - start)
    }
}

/// What `Snapshotter.admit` decided: an earlier request with the same client token made the
/// snapshot already, or this one is admitted and holds its locks until it has run.
public enum Admission: Sendable {
    case reused(SnapshotRecord)
    case admitted(AdmittedCreate)
}

/// A create past its admission: its record is saved `progressing` and it holds the
/// repository's shared lock, the disk's lock and the snapshot's creation lock. `run` reads
/// the disk (on any thread, once); dropped without running, it marks the record failed.
public final class AdmittedCreate: @unchecked Sendable {
    // @unchecked: used by one thread at a time (the caller that admitted it, or the one it
    // handed it to); nothing in it is shared.
    let snapshotter: Snapshotter
    let request: CreateRequest
    public let record: SnapshotRecord
    let disk: DiskRecord
    let libvirtDisk: LibvirtDiskHandle?
    let live: [SnapshotRecord]
    let notes: [String]
    let sourceStatus: FileStatus
    let identityCheck: IdentityCheck
    /// `--qmp`: the QEMU connected to while the request was admitted (`create`).
    var qemuConnection: Concurrent<PointInTimeView.Connection>?
    private var locks: [HeldLock]
    private var ran = false

    init(snapshotter: Snapshotter, request: CreateRequest, record: SnapshotRecord, disk: DiskRecord,
         libvirtDisk: LibvirtDiskHandle?, live: [SnapshotRecord], notes: [String], sourceStatus: FileStatus,
         identityCheck: IdentityCheck, locks: [HeldLock]) {
        self.snapshotter = snapshotter
        self.request = request
        self.record = record
        self.disk = disk
        self.libvirtDisk = libvirtDisk
        self.live = live
        self.notes = notes
        self.sourceStatus = sourceStatus
        self.identityCheck = identityCheck
        self.locks = locks
    }

    deinit {
        guard !ran else { return }
        var failed = record
        failed.status = .failed
        failed.failureReason = "admitted, but never run"
        failed.completionTime = ISOTime.now()
        try? Catalog(repository: snapshotter.repository).save(failed)
        release()
    }

    /// Takes the admission back before it ran: its record is removed (it never held data)
    /// and its locks let go of. For a group whose other members could not be admitted.
    public func withdraw() {
        guard !ran else { return }
        ran = true
        try? snapshotter.repository.removeRecord(record.snapshotId)
        release()
    }

    /// Lets go of the locks, the last taken first: the creation lock (its file removed
    /// first: its name is used once), the disk's, the repository's.
    private func release() {
        if let creation = locks.last { try? FileSystem.removeIfExists(creation.path) }
        while !locks.isEmpty { _ = locks.removeLast() }
    }

    /// Reads the disk and commits the snapshot (or marks it failed); the locks are let go
    /// of at the end. Runs once.
    public func run() throws -> CreateResult {
        precondition(!ran, "an admitted create runs once")
        ran = true
        defer { release() }
        let repository = snapshotter.repository
        let catalog = Catalog(repository: repository)
        let request = self.request, disk = self.disk, live = self.live, sourceStatus = self.sourceStatus
        let identityCheck = self.identityCheck
        let libvirtDisk = self.libvirtDisk
        var notes = self.notes
        var record = self.record
        let id = record.snapshotId
        let throughView = request.qemu != nil || libvirtDisk != nil
        let area = try TemporaryArea(repository: repository)
        defer { area.remove() }
        // The disk's latest accomplished snapshot: the fast path's reference, and the base
        // of change tracking.
        let previous = Catalog.latestAccomplished(of: disk.diskId, chunkSize: record.chunkSize, among: live)
        // Its fixed index (read whole and verified) is opened while QEMU makes the view.
        let previousIndex = throughView ? previous.map { base in Concurrent { try? FixedIndexReader(repository, base.snapshotId) } } : nil
        var view: (any LiveDiskView)?
        var clone: ReflinkClone?
        defer { clone?.remove() }
        var abandoned: [String] = []
        var source: Source?
        /// The identity probe of an incremental through a view, while the pipeline runs.
        var probing: Concurrent<DiskIdentity>?
        var warnings: [String] = []
        /// The view's teardown, once begun.
        var closing: Concurrent<String?>?
        /// Begins ending the view on another thread, once the pipeline has read all it needs:
        /// the identity probe's reads end first, then the NBD connections, then the view in
        /// QEMU (bitmaps stay). Its QMP round trips wait on QEMU while this thread publishes
        /// the packs and indexes. Once the data is read, a failure here is a warning.
        func startClosingView() {
            guard closing == nil, let made = view else { return }
            let readers = source?.view, running = probing, handoff = Unshared(made)
            closing = Concurrent {
                _ = try? running?.value()
                readers?.close()
                do { try handoff.value.close() } catch { return "tearing down the QEMU view: \(Snapshotter.describe(error))" }
                return nil
            }
        }
        var viewEnded = false
        /// Ends the view and waits until it has ended.
        func closeView() {
            startClosingView()
            if let ending = closing, !viewEnded {
                viewEnded = true
                if let warning = try? ending.value() { warnings.append(warning) }
            }
            source = nil
        }
        do {
            if throughView {
                let base = previous.map {
                    TrackingBase(snapshotID: $0.snapshotId.rawValue, bitmap: $0.changeTracking?.bitmap,
                                 granularity: $0.changeTracking?.granularity, diskSize: $0.sourceSize)
                }
                let made: any LiveDiskView
                var freezing = false
                if let qemu = request.qemu {
                    var viewRequest = ViewRequest(qmpSocket: qemu.qmpSocket, imagePath: disk.path, snapshotID: id.rawValue,
                                                  repositoryID: repository.config.repositoryId,
                                                  chunkSize: UInt64(record.chunkSize), scratchDirectory: area.directory)
                    viewRequest.node = qemu.node
                    viewRequest.nbdSocket = qemu.nbdSocket
                    viewRequest.freezer = qemu.guestAgent.map { GuestFreezer(socketPath: $0, limit: qemu.freezeLimit) }
                    freezing = qemu.guestAgent != nil
                    // A libvirt checkpoint is not a base here (libvirt's QEMU is libvirt's to drive).
                    let viaLibvirt = previous?.changeTracking?.method == "libvirt-checkpoint"
                    viewRequest.base = base.map { viaLibvirt ? TrackingBase(snapshotID: $0.snapshotID, bitmap: nil, granularity: nil, diskSize: $0.diskSize) : $0 }
                    made = try PointInTimeView.make(viewRequest, connection: try qemuConnection?.value())
                } else {
                    let handle = libvirtDisk!
                    var viewRequest = LibvirtViewRequest(snapshotID: id.rawValue, repositoryID: repository.config.repositoryId,
                                                         scratchDirectory: area.directory)
                    // The base only if it was taken through libvirt, of this very domain disk.
                    let tracked = previous?.changeTracking
                    let sameDisk = tracked?.method == "libvirt-checkpoint" && tracked?.domain == handle.target.domain && tracked?.target == handle.disk.target
                    viewRequest.base = base.map { sameDisk ? $0 : TrackingBase(snapshotID: $0.snapshotID, bitmap: nil, granularity: nil, diskSize: $0.diskSize) }
                    viewRequest.wantedCheckpoints = Set(live.compactMap { $0.changeTracking?.method == "libvirt-checkpoint" ? $0.changeTracking?.bitmap : nil })
                    if handle.target.freeze {
                        viewRequest.freezer = GuestFreezer(target: .libvirt(uri: handle.target.uri, domain: handle.target.domain), limit: handle.target.freezeLimit)
                        freezing = true
                    }
                    made = try LibvirtView.make(handle, viewRequest)
                }
                view = made

                PhaseTimer.mark("create: point-in-time view made")
                var opened = try Source.open(view: made, path: disk.path)
                source = opened
                PhaseTimer.mark("create: view opened (block status)")
                let viewSource = opened
                let probe: @Sendable () throws -> DiskIdentity = {
                    try GuestProbe.identify(size: viewSource.size) { buffer, offset in try viewSource.readExactly(into: buffer, at: offset) }
                }
                if case .incremental = made.plan {
                    // An incremental reads little: its identity probe (a few windows over NBD
                    // and libblkid) runs beside the pipeline, checked before anything commits.
                    probing = Concurrent(probe)
                } else {
                    let probed = try probe()
                    record.identityChange = try identityCheck.check(probed)
                    record.identity = probed
                    PhaseTimer.mark("create: identity probed")
                }
                record.consistencyMethod = made.method
                if let frozen = made.frozen {
                    record.guestFrozen = true
                    record.frozenFilesystems = frozen.filesystems
                    record.freezeMilliseconds = frozen.milliseconds
                    if frozen.thawedByWatchdog { warnings.append("the guest agent did not confirm the thaw; the watchdog thawed the guest") }
                } else if freezing {
                    warnings.append("--freeze: QEMU has the image open read-only, so nothing in the guest writes it; the guest was not frozen")
                }
                var tracking: ChangeTrackingRecord
                if let qemuView = made as? PointInTimeView {
                    record.sourceFormat = qemuView.node.driver == "qcow2" ? SourceFormat.qcow2.rawValue : nil
                    tracking = ChangeTrackingRecord(node: qemuView.node.name, bitmap: qemuView.newBitmap, granularity: qemuView.newBitmap == nil ? nil : qemuView.granularity)
                    if qemuView.newBitmap != nil { tracking.qmpSocket = request.qemu.map { FileSystem.absolutePath($0.qmpSocket) } }
                } else {
                    let libvirtView = made as! LibvirtView
                    record.sourceFormat = libvirtView.handle.disk.format == "qcow2" ? SourceFormat.qcow2.rawValue : nil
                    tracking = ChangeTrackingRecord(node: nil, bitmap: libvirtView.checkpoint, granularity: nil)
                    tracking.method = "libvirt-checkpoint"
                    tracking.libvirtUri = libvirtView.handle.target.uri
                    tracking.domain = libvirtView.handle.target.domain
                    tracking.target = libvirtView.handle.disk.target
                }
                switch made.plan {
                case .incremental:
                    if let previous, previous.sourceSize != opened.size {
                        // The bitmap says nothing of a resized disk's new bytes: all of it is read.
                        opened.changedRanges = nil
                        source = opened
                        tracking.fullReadReason = "the disk's size changed from \(previous.sourceSize) to \(opened.size) bytes since \(previous.snapshotId)"
                    } else {
                        tracking.baseSnapshotId = previous?.snapshotId.rawValue
                    }
                case .full(let reason): tracking.fullReadReason = reason
                }
                record.changeTracking = tracking
            } else {
                var readPath = disk.path
                if request.clone, sourceStatus.isRegularFile {
                    abandoned = ReflinkClone.removeAbandoned(besides: disk.path).map { "clone \($0)" }
                    // A qcow2 image a VM holds is not cloned (its metadata may be mid-update):
                    // it is refused below, or read through --qmp.
                    let heldQcow2 = request.format != .raw && Qcow2Image.isQcow2(disk.path)
                        && ((try? Qcow2Image(path: disk.path, allowBacking: request.allowBacking))?.liveUse() != nil)
                    do {
                        // Only the disk's latest snapshot's clone is of use (other disks' are theirs).
                        let wanted = Set(live.filter { $0.sourceDiskId != disk.diskId }.compactMap { $0.keptClone?.path } + [previous?.keptClone?.path].compactMap { $0 })
                        notes += ReflinkClone.removeUnwantedKept(besides: disk.path, repositoryID: repository.config.repositoryId, wanted: wanted)
                            .map { "removed the kept clone \($0): no snapshot of this repository uses it" }
                    }
                    if !heldQcow2, let made = try ReflinkClone.make(of: disk.path, tag: id.rawValue) {
                        clone = made
                        readPath = made.path
                        record.consistencyMethod = "reflink-clone"
                        TestHooks.pause(at: "create-after-clone")
                    }
                }
                var opened = try Source.open(readPath, format: request.format, allowBacking: request.allowBacking)
                if request.keepClone, let clone {
                    var tracking = ChangeTrackingRecord(node: nil, bitmap: nil, granularity: nil)
                    tracking.method = "reflink-extents"
                    switch try Snapshotter.cloneChanges(previous: previous, clone: clone, raw: opened.qcow2 == nil, size: opened.size) {
                    case .changed(let ranges):
                        opened.changedRanges = ranges
                        tracking.baseSnapshotId = previous?.snapshotId.rawValue
                    case .full(let reason):
                        tracking.fullReadReason = reason
                    }
                    record.changeTracking = tracking
                }
                source = opened
                if let image = opened.qcow2 {
                    record.sourceFormat = SourceFormat.qcow2.rawValue
                    record.backingChain = image.backingChain.isEmpty ? nil : image.backingChain
                    if let live = image.liveUse() {
                        guard request.allowLive else { throw EngineError.sourceInUse("\(disk.path) \(live); a snapshot of it would not be one point in time (pass --qmp with the socket of the QEMU that runs it, shut the VM down, or pass --allow-live)") }
                        record.crashConsistent = false
                    }
                } else if clone == nil, FileLocks.heldForWritingByQemu(opened.file) {
                    // A raw image or a device a VM runs on, read in place: its guest may
                    // write any block at any moment of the read. Refused before reading
                    // (the change checks after the read only see a file's mtime move).
                    let cloneHint = opened.kind != .file ? ""
                        : request.clone ? " or keep the image on a filesystem with reflinks (XFS, btrfs), where it is cloned first,"
                        : " or let it be cloned on its reflink filesystem (without --no-clone),"
                    guard request.allowLive else { throw EngineError.sourceInUse("\(disk.path) is open for writing by another process (QEMU's image lock is held); a snapshot of it would not be one point in time (pass --qmp with the socket of the QEMU that runs it,\(cloneHint) shut the VM down, or pass --allow-live)") }
                    record.crashConsistent = false
                }
            }
            let opened = source!
            record.sourceKind = opened.kind
            record.sourceSize = opened.size
            record.chunkCount = FixedIndexHeader.chunkCount(diskSize: opened.size, chunkSize: UInt32(record.chunkSize))
            if !request.allowLive, let mount = opened.writableMounts().first {
                throw EngineError.sourceInUse("\(disk.path) is mounted read-write at \(mount.mountPoint); a snapshot of it would not be one point in time (unmount it, remount it read-only, or pass --allow-live)")
            }
            try snapshotter.run(source: opened, request: request, record: &record, area: area, previous: previous,
                                previousIndex: previousIndex.map { opening in { try? opening.value() } }, whenRead: startClosingView)
            PhaseTimer.mark("create: data read and stored")
            if let running = probing {
                probing = nil
                let probed = try running.value()
                record.identityChange = try identityCheck.check(probed)
                record.identity = probed
            }
            closeView()
            PhaseTimer.mark("create: view closed")
            if request.keepClone, let clone, record.sourceFormat == nil {

                let keptPath = ReflinkClone.keptPath(besides: disk.path, repositoryID: repository.config.repositoryId, snapshotID: id.rawValue)
                let status = try clone.keep(as: keptPath)
                record.keptClone = KeptCloneRecord(path: keptPath, inode: status.inode,
                                                   changeTime: "\(status.changeTime.seconds).\(status.changeTime.nanoseconds)", size: status.size)
            } else if request.keepClone {
                warnings.append(clone == nil ? "--keep-clone: no reflink clone could be made of \(disk.path) (its filesystem cannot clone, or its directory is not writable)"
                                             : "--keep-clone: the clone of a qcow2 image is not kept (its extents are not guest offsets)")
            }
            record.status = .accomplished
            record.progress = "100%"
            record.completionTime = ISOTime.now()
            try catalog.save(record)
            TestHooks.pause(at: "create-after-commit")
            PhaseTimer.mark("create: committed")
            if let old = previous?.keptClone {
                // Committed: the previous snapshot's clone is no longer the newest.
                if let freed = ReflinkClone.removeKept(path: old.path, inode: old.inode) { notes.append("removed the previous snapshot's kept clone, which held \(freed) bytes of its own") }
            }
            if let view {
                // Committed: the previous snapshot's bitmap is of no more use.
                do { try view.commit() } catch { warnings.append("removing the previous snapshot's bitmap (the next create removes it): \(Snapshotter.describe(error))") }
            }
            var result = CreateResult(record: record, reused: false)
            result.warnings = warnings
            result.notes = notes
            let place = view is LibvirtView ? "in libvirt" : "in QEMU"
            result.removedStale = (view?.removedStale.map { "\($0) \(place)" } ?? []) + abandoned
            snapshotter.compactIndex(into: &result)
            PhaseTimer.mark("create: index compacted")
            return result
        } catch {
            _ = try? probing?.value()  // it reads through the view
            closeView()
            view?.abandon()
            if let kept = record.keptClone { try? FileSystem.removeIfExists(kept.path) }
            record.status = .failed
            record.failureReason = Snapshotter.describe(error)
            record.completionTime = ISOTime.now()
            try? catalog.save(record)
            throw error
        }
        }
}

/// Whether the disk at a registered path is still the one registered (docs/DESIGN.md, "Disk
/// identity"): a changed identity is recorded, a different disk refused unless forced.
struct IdentityCheck: Sendable {
    let repository: Repository
    let disk: DiskRecord
    let force: Bool

    /// What changed (nil: nothing); updates the disk's registered identity when it did.
    func check(_ identity: DiskIdentity) throws -> String? {
        var identityChange: String?
        if let recorded = disk.identity {
            switch IdentityPolicy.compare(recorded: recorded, now: identity) {
            case .same: break
            case .changed(let what): identityChange = what
            case .different(let why) where !force:
                throw CatalogError(code: "DiskId.ValueNotSupported", message: "another disk now sits at \(disk.path), registered as \(disk.diskId) (\(disk.diskName)): \(why); pass --force to snapshot it anyway", exitStatus: .conflict, httpStatus: 403)
            case .different(let why): identityChange = "replaced (--force): " + why
            }
        }
        if disk.identity == nil || identityChange != nil {
            var updated = disk
            updated.identity = identity
            try repository.writeDisk(RecordJSON.encode(updated), disk.diskId)
        }
        return identityChange
    }
}
