import Foundation
import Synchronization
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog

/// What a caller asks of `copy`.
public struct CopyRequest: Sendable {
    /// Snapshot ids or names in the source repository.
    public var snapshots: [String]
    /// Every accomplished snapshot of the source (then `snapshots` is empty).
    public var all = false
    public var progress: (any ProgressObserver)?
    public var workers = Workers.defaultCount
    /// Raw bytes of chunks new to the target after which the copy publishes what it stored
    /// (its packs and an index segment naming them): a copy killed after that resumes from
    /// there, not from the snapshot's start. `DISKSNAP_COPY_CHECKPOINT_BYTES` overrides.
    public var checkpointBytes: UInt64 = Copier.defaultCheckpointBytes

    public init(snapshots: [String], all: Bool = false) {
        self.snapshots = snapshots
        self.all = all
    }
}

/// What `copy` did with one snapshot.
public struct CopyOutcome: Sendable {
    /// The record as the target now holds it.
    public var record: SnapshotRecord
    /// False: the target held the snapshot already (nothing was read).
    public var copied: Bool
    /// Chunks (and their raw bytes) the target lacked, read from the source, verified and stored.
    public var chunksCopied: UInt64 = 0
    public var bytesCopied: UInt64 = 0
    /// Compressed bytes they take in the target.
    public var bytesStored: UInt64 = 0
    /// Non-zero chunks the target had already.
    public var chunksPresent: UInt64 = 0
    /// Of the chunks copied, those that went over in their source blocks as stored (not
    /// compressed again: both repositories compress alike, or the block is raw).
    public var chunksAsStored: UInt64 = 0
    public var seconds: Double = 0
    /// A disk record the copy added to the target (its first snapshot there).
    public var diskAdded: DiskID?
}

/// Copies snapshots from one repository to another (a directory or a bucket, either way):
/// only chunks the target lacks are read, each verified against its digest as it is read
/// (a damaged source chunk fails the copy, it is never stored), and stored as a create
/// stores its new chunks; the fixed index goes over byte for byte, so the target's record
/// keeps the source's id, name, times and index digest.
///
/// In the target a copy is a create (docs/DESIGN.md, "Copying between repositories"): the
/// target's rules are checked (names, quotas) under its catalog lock, its record is
/// `progressing` under the creation and disk locks a create holds (gc waits for it and a
/// create of the same disk is refused meanwhile), packs and segments are durable before the
/// fixed index, and the record is committed last. Every `checkpointBytes` of new chunks the
/// packs and a segment are published, so a killed copy, run again, reads only what was not
/// yet stored; a snapshot the target holds already is skipped.
public struct Copier {
    public static let defaultCheckpointBytes: UInt64 = 4 << 30

    let source: Repository
    let target: Repository

    public init(from source: Repository, to target: Repository) {
        self.source = source
        self.target = target
    }

    /// Copies the requested snapshots, oldest first; `each` sees every outcome as it comes.
    public func copy(_ request: CopyRequest, each: (CopyOutcome) -> Void = { _ in }) throws -> [CopyOutcome] {
        guard source.config.repositoryId != target.config.repositoryId else {
            throw EngineError(code: "Copy.SameRepository", "\(target.location) is the source repository itself (id \(source.config.repositoryId))", exitStatus: .invalidParameter)
        }
        let sourceLock = try source.lock(.shared, for: "copy")
        let readers = try source.readersLock()
        let targetLock = try target.lock(.shared, for: "copy")
        defer { withExtendedLifetime((sourceLock, readers, targetLock)) {} }
        let catalog = Catalog(repository: source)
        // Every name is resolved (and must be accomplished) before anything is copied.
        var records: [SnapshotRecord]
        if request.all {
            records = try catalog.records().records.filter { $0.status == .accomplished }
        } else {
            records = try request.snapshots.map { try catalog.find($0) }
            if let unfinished = records.first(where: { $0.status != .accomplished }) {
                throw EngineError.snapshotNotRestorable("snapshot \(unfinished.snapshotId) is \(unfinished.status.rawValue); only an accomplished snapshot can be copied")
            }
        }
        var seen = Set<SnapshotID>()
        records = records.filter { seen.insert($0.snapshotId).inserted }
            .sorted { ($0.creationTime, $0.snapshotId) < ($1.creationTime, $1.snapshotId) }
        let index = try ChunkLocator.open(source)
        let packs = PackFiles(repository: source, index: index)
        let disks = try DiskRegistry(repository: source).disks()
        var outcomes: [CopyOutcome] = []
        for record in records {
            let sourceDisk = disks.first { $0.diskId == record.sourceDiskId }
            let outcome = try copyOne(record, request: request, index: index, packs: packs, sourceDisk: sourceDisk)
            each(outcome)
            outcomes.append(outcome)
        }
        return outcomes
    }

    /// The target's admission of one snapshot, then its data, then its commit.
    private func copyOne(_ original: SnapshotRecord, request: CopyRequest, index: ChunkLocator, packs: PackFiles,
                         sourceDisk: DiskRecord?) throws -> CopyOutcome {
        let snapshot = try OpenedSnapshot.open(original.snapshotId.rawValue, in: source)
        if let recorded = original.fixedIndexDigest, recorded != snapshot.fixed.header.entriesDigest.hex {
            throw FormatError(file: snapshot.fixed.file.path, "does not match its record's fixedIndexDigest (damaged)")
        }
        guard let diskID = original.sourceDiskId else {
            throw EngineError(code: "InvalidDiskId.NotFound", "snapshot \(original.snapshotId) names no disk (a record older than disk registration); it cannot be copied", exitStatus: .notFound)
        }
        let rules = (Profile(rawValue: target.config.profile ?? "ecs") ?? .ecs).rules
        let catalog = Catalog(repository: target)
        var catalogLock: HeldLock? = try target.lockCatalog()
        let existing = try catalog.records(markingDeadFailed: true).records
        if let there = existing.first(where: { $0.snapshotId == original.snapshotId }) {
            switch there.status {
            case .accomplished: return CopyOutcome(record: there, copied: false)
            case .progressing:
                throw CatalogError.busy("IncorrectSnapshotStatus", "snapshot \(original.snapshotId) is being copied into \(target.location) by another process")
            case .failed, .damaged: break  // a copy that did not finish, or lost chunks (check --repair): done again
            }
        }
        let live = existing.filter { $0.status != .failed && $0.snapshotId != original.snapshotId }
        let (disk, added) = try targetDisk(diskID, sourceDisk: sourceDisk, original: original)
        guard let diskLock = try target.tryLock(name: "disk-\(diskID.rawValue)") else {
            throw CatalogError.busy("IncorrectDiskStatus.CreatingSnapshot", "a snapshot of disk \(diskID) (\(disk.diskName)) is being created in \(target.location); try again later")
        }
        defer { withExtendedLifetime(diskLock) {} }
        // The target's rules, as for a create there: a copy cannot break them.
        try rules.validateName(original.snapshotName, automatic: original.automatic)
        try rules.validateDescription(original.description)
        try Tag.validate(try original.tags.map { pair throws(CatalogError) in try Tag(key: pair.key, value: pair.value) })
        try QuotaPolicy.checkUniqueName(rules: rules, name: original.snapshotName, disk: disk, live: live)
        try QuotaPolicy.check(rules: rules, disk: disk, disks: try DiskRegistry(repository: target).disks() + (added ? [disk] : []), live: live,
                              repositoryCap: target.config.maxSnapshots)
        guard let creationLock = try target.tryLock(name: Catalog.creationLockName(original.snapshotId)) else {
            throw CatalogError.busy("IncorrectSnapshotStatus", "snapshot \(original.snapshotId) is being copied into \(target.location) by another process")
        }
        defer {
            try? FileSystem.removeIfExists(creationLock.path)
            withExtendedLifetime(creationLock) {}
        }
        if added { try target.writeDisk(RecordJSON.encode(disk), disk.diskId) }
        var record = Self.copyRecord(of: original, from: source)
        if let token = record.clientToken, live.contains(where: { $0.clientToken == token }) {
            record.clientToken = nil  // the target's token belongs to another of its snapshots
            record.requestFingerprint = nil
        }
        try catalog.save(record)
        catalogLock = nil  // the record now counts for every later rule check
        _ = catalogLock
        // A copy killed after publishing the fixed index but before its commit left it.
        try target.removeFixedIndex(original.snapshotId.rawValue)
        let started = DispatchTime.now().uptimeNanoseconds
        do {
            let previous = Catalog.latestAccomplished(of: diskID, chunkSize: record.chunkSize, among: live)
            var outcome = try copyData(snapshot, into: &record, previous: previous, request: request, index: index, packs: packs)
            record.status = .accomplished
            record.progress = "100%"
            record.completionTime = original.completionTime ?? ISOTime.now()
            record.copyTime = ISOTime.now()
            try catalog.save(record)
            outcome.record = record
            outcome.seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
            outcome.diskAdded = added ? disk.diskId : nil
            compactIndex()
            return outcome
        } catch {
            record.status = .failed
            record.failureReason = "copy from \(source.location): " + Snapshotter.describe(error)
            record.completionTime = ISOTime.now()
            try? catalog.save(record)
            throw error
        }
    }

    /// The target's disk of that id: registered there already, or the source's record (to be
    /// written). Another disk registered there under the same name or path is a conflict.
    private func targetDisk(_ id: DiskID, sourceDisk: DiskRecord?, original: SnapshotRecord) throws -> (DiskRecord, added: Bool) {
        let disks = try DiskRegistry(repository: target).disks()
        if let same = disks.first(where: { $0.diskId == id }) { return (same, false) }
        var disk = sourceDisk ?? DiskRecord(diskId: id, diskName: DiskRegistry.nameFromPath(original.sourcePath), path: original.sourcePath,
                                            diskType: original.sourceDiskType ?? "data", instance: nil)
        if sourceDisk == nil { disk.identity = original.identity }
        if let clash = disks.first(where: { $0.path == disk.path }) {
            throw CatalogError(code: "InvalidDiskPath.Duplicate", message: "\(disk.path) is registered in \(target.location) as another disk, \(clash.diskId) (\(clash.diskName)), not as \(id) (\(disk.diskName)); snapshots of two disk ids cannot be merged", exitStatus: .conflict)
        }
        if let clash = disks.first(where: { $0.diskName == disk.diskName }) {
            throw CatalogError(code: "InvalidDiskName.Duplicate", message: "a disk named '\(disk.diskName)' exists in \(target.location) as \(clash.diskId), not as \(id); rename one of them (disk rename) and copy again", exitStatus: .conflict)
        }
        return (disk, true)
    }

    /// The target's record: the source's, `progressing`, without what ties it to this host's
    /// change trackers (a QEMU bitmap, a libvirt checkpoint or a kept clone belong to the
    /// source's snapshot: deleting the copy must not remove them).
    static func copyRecord(of original: SnapshotRecord, from source: Repository) -> SnapshotRecord {
        var record = original
        record.status = .progressing
        record.progress = "0%"
        record.completionTime = nil
        record.failureReason = nil
        record.keptClone = nil
        if record.changeTracking != nil {
            record.changeTracking?.bitmap = nil
            record.changeTracking?.granularity = nil
            record.changeTracking?.qmpSocket = nil
        }
        record.copiedFrom = source.config.repositoryId
        record.bytesStoredNew = 0
        record.chunksStoredNew = 0
        return record
    }

    private func compactIndex() {
        guard let gcLock = try? target.tryLock(name: "gc") else { return }
        defer { withExtendedLifetime(gcLock) {} }
        _ = try? IndexCompactor.compact(target)
    }

    /// Stores the chunks the target lacks, in rounds of at most `checkpointBytes` (each
    /// published before the next starts), then publishes the fixed index.
    /// `previous`: the target's latest accomplished snapshot of the disk; a digest equal to
    /// its entry at the same position is stored there already, and needs no lookup.
    private func copyData(_ snapshot: OpenedSnapshot, into record: inout SnapshotRecord, previous: SnapshotRecord?,
                          request: CopyRequest, index: ChunkLocator, packs: PackFiles) throws -> CopyOutcome {
        // Read after this copy's record was published (as a create does): a gc that condemned
        // packs before then does not wait for it, so their chunks must not count as present.
        let condemned = Set((try target.gcState()?.condemnedPacks ?? []).compactMap(PackID.init(hex:)))
        // A previous snapshot whose fixed index does not verify is not used (check reports it).
        // Repositories that name chunks differently (one encrypted, or two with their own
        // chunk-id keys): every chunk is read, named anew, and the fixed index written anew.
        let renaming = !source.chunkIdentity.namesLike(target.chunkIdentity)
        let previousIndex = renaming ? nil : previous.flatMap { try? FixedIndexReader(target, $0.snapshotId) }
        let chunkSize = snapshot.chunkSize
        let fixedArea = try TemporaryArea(repository: target)
        defer { fixedArea.remove() }
        let renamed = renaming ? try FixedIndexBuilder(path: fixedArea.path("renamed.fidx"), diskSize: snapshot.size, chunkSize: UInt32(chunkSize)) : nil
        let runs = WorkPlan.runs(dataRanges: snapshot.size > 0 ? [ByteRange(start: 0, end: snapshot.size)] : [],
                                 chunkSize: chunkSize, maxChunks: UInt64(max(1, Snapshotter.runBytes / Int(chunkSize))))
        let progress = Progress(label: "copy \(snapshot.record.snapshotId)", total: snapshot.size, observer: request.progress)
        let counters = CopyCounters()
        let catalog = Catalog(repository: target)
        var outcome = CopyOutcome(record: record, copied: true)
        var done = 0
        while done < runs.count {
            // A work area per round: each writer's runs and segment are its own.
            let area = try TemporaryArea(repository: target)
            defer { area.remove() }
            let store = try ChunkLocator.open(target, excluding: condemned)
            let writer = ChunkWriter(repository: target, store: store, area: area, expectedChunks: snapshot.fixed.header.chunkCount)
            let round = Array(runs[done...])
            let queue = WorkQueue(count: round.count)
            let work = CopyWork(snapshot: snapshot, index: index, packs: packs, writer: writer, previous: previousIndex,
                                renamed: renamed, verifyPrevious: !condemned.isEmpty, runs: round, compression: target.config.compression,
                                sameCompression: source.config.compression == target.config.compression,
                                counters: counters, progress: progress,
                                checkpoint: counters.bytesCopied.load(ordering: .relaxed) + request.checkpointBytes)
            var progressRecord = record
            var lastSave = progress.elapsedSeconds
            try runParallel(workers: min(request.workers, round.count), queue: queue, progress: progress, tick: {
                guard progress.elapsedSeconds - lastSave >= 0.2, snapshot.size > 0 else { return }
                lastSave = progress.elapsedSeconds
                progressRecord.progress = "\(progress.done.load(ordering: .relaxed) * 100 / snapshot.size)%"
                try? catalog.save(progressRecord, progressOnly: true)
            }) { _, queue in
                try work.run(queue)
            }
            let summary = try writer.finish()
            outcome.bytesStored += summary.bytesStored
            done += queue.handedOut
            if done < runs.count { TestHooks.pause(at: "copy-after-checkpoint") }
        }
        if let renamed {
            // Every entry was written by the runs, each chunk named as the target names it.
            let digest = try renamed.finish(snapshotID: record.snapshotId, createdUnixSeconds: snapshot.fixed.header.createdUnixSeconds)
            try renamed.publish(in: target, snapshotID: record.snapshotId)
            record.fixedIndexDigest = digest.hex  // the target's names, not the source's
        } else {
            // The fixed index, byte for byte: the same entries, header and digest as the source's.
            let path = fixedArea.path("index.fidx")
            try Self.copyFile(snapshot.fixed.file, to: path)
            let copied = try FixedIndexReader(path: path)
            guard copied.header.entriesDigest == snapshot.fixed.header.entriesDigest else {
                throw FormatError(file: path, "the copied fixed index does not read back as the source's")
            }
            try target.publishFixedIndex(path, record.snapshotId)
        }
        outcome.chunksCopied = counters.chunksCopied.load(ordering: .relaxed)
        outcome.bytesCopied = counters.bytesCopied.load(ordering: .relaxed)
        outcome.chunksPresent = counters.chunksPresent.load(ordering: .relaxed)
        outcome.chunksAsStored = counters.chunksAsStored.load(ordering: .relaxed)
        record.bytesStoredNew = outcome.bytesStored
        record.chunksStoredNew = outcome.chunksCopied
        return outcome
    }

    /// Copies a file into a new one, fsynced.
    static func copyFile(_ file: any RandomAccessReading, to path: String) throws {
        let size = try file.size()
        let out = try OpenFile(path: path, mode: [.writeOnly, .create, .exclusive], permissions: 0o600)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        while offset < size {
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(min(UInt64(buffer.count), size - offset))])
            try file.readExactly(into: piece, at: offset)
            try out.write(UnsafeRawBufferPointer(piece), at: offset)
            offset += UInt64(piece.count)
        }
        try out.sync()
    }
}

final class CopyCounters: Sendable {
    let chunksCopied = Atomic<UInt64>(0)
    let bytesCopied = Atomic<UInt64>(0)
    let chunksPresent = Atomic<UInt64>(0)
    let chunksAsStored = Atomic<UInt64>(0)
}

/// One round's per-run work, shared by the workers: for each non-zero entry, is the chunk in
/// the target (its previous snapshot at that position, its index, or claimed by another
/// worker)? If not, it is read from the source, in the source's store order, verified, and
/// stored. A source block whose chunks are all wanted (the common case of a first copy) goes
/// over as stored, without compressing it again, when the target would store it the same way
/// (a raw block, or both repositories compressing alike); every other wanted chunk is added to
/// this worker's packs, in disk order. A worker stops taking runs once the round has copied
/// `checkpoint` bytes in all.
private struct CopyWork: Sendable {
    let snapshot: OpenedSnapshot
    let index: ChunkLocator
    let packs: PackFiles
    let writer: ChunkWriter
    let previous: FixedIndexReader?
    /// The target's fixed index being written, when the target names chunks otherwise.
    let renamed: FixedIndexBuilder?
    let verifyPrevious: Bool
    let runs: [ChunkRun]
    let compression: Compression
    /// Source and target compress alike: a compressed block may go over as stored.
    let sameCompression: Bool
    let counters: CopyCounters
    let progress: Progress
    let checkpoint: UInt64

    func run(_ queue: WorkQueue) throws {
        let chunkSize = Int(snapshot.chunkSize)
        let reader = ChunkReader(index: index, packs: packs)
        let buffer = WorkPlan.allocateRunBuffer(runs, chunkSize: snapshot.chunkSize)
        defer { buffer.deallocate() }
        let builder = writer.makePackBuilder(compression: compression, blockCapacity: max(Snapshotter.blockBytes, chunkSize))
        while let i = queue.take() {
            let run = runs[i]
            let digests = try snapshot.fixed.entries(first: run.first, count: Int(run.end - run.first))
            let total = try renamed.map { try rename(run, digests: digests, reader: reader, buffer: buffer, builder: builder, into: $0) }
                ?? copy(run, digests: digests, reader: reader, buffer: buffer, builder: builder)
            if total >= checkpoint { queue.close() }
            progress.add(min(run.end * snapshot.chunkSize, snapshot.size) - snapshot.chunkRange(run.first).start)
        }
        try builder.finish()
    }

    /// A run copied between repositories that name chunks alike: each chunk the target lacks
    /// is located, whole blocks go over as stored (`passOn`), the rest is read and added in
    /// disk order. Returns the bytes copied so far by the round.
    private func copy(_ run: ChunkRun, digests: [ChunkDigest], reader: ChunkReader, buffer: UnsafeMutableRawBufferPointer,
                      builder: PackBuilder) throws -> UInt64 {
        var before: [ChunkDigest] = []
        if let previous, run.first < previous.header.chunkCount {
            before = try previous.entries(first: run.first, count: Int(min(run.end, previous.header.chunkCount) - run.first))
        }
        var located: [(chunk: Int, location: ChunkLocation)] = []
        var present: UInt64 = 0
        for c in 0..<digests.count where digests[c] != .zero {
            if c < before.count && before[c] == digests[c], try !verifyPrevious || writer.store.contains(digests[c]) {
                present += 1
            } else if try writer.claim(digests[c]) {
                located.append((c, try locate(c, of: run, digests: digests, reader: reader)))
            } else {
                present += 1
            }
        }
        located.sort(by: Self.inStoreOrder)
        var bytes: UInt64 = 0
        var rest: [(chunk: Int, location: ChunkLocation)] = []
        var g = 0
        while g < located.count {
            try reader.readAhead(located[g...].lazy.map(\.location))
            var h = g + 1
            while h < located.count && located[h].location.pack == located[g].location.pack && located[h].location.offset == located[g].location.offset { h += 1 }
            let block = Array(located[g..<h])
            if try passOn(block, run: run, digests: digests, reader: reader, builder: builder) {
                bytes += block.reduce(0) { $0 + UInt64($1.location.rawLength) }
                counters.chunksAsStored.wrappingAdd(UInt64(block.count), ordering: .relaxed)
            } else {
                rest += block
            }
            g = h
        }
        try read(rest, of: run, digests: digests, reader: reader, into: buffer)
        for c in rest.map(\.chunk).sorted() {
            let chunk = slot(c, of: run, in: buffer)
            try builder.add(digests[c], UnsafeRawBufferPointer(chunk))
            bytes += UInt64(chunk.count)
        }
        try builder.endBlock()
        counters.chunksPresent.wrappingAdd(present, ordering: .relaxed)
        counters.chunksCopied.wrappingAdd(UInt64(located.count), ordering: .relaxed)
        return counters.bytesCopied.wrappingAdd(bytes, ordering: .relaxed).newValue
    }

    /// A run copied into a repository that names chunks otherwise: each non-zero chunk is
    /// read (in the source's store order, verified under the source's names), named as the
    /// target names it, stored unless the target has it, and its new name written into the
    /// target's fixed index at its place. Returns the bytes copied so far by the round.
    private func rename(_ run: ChunkRun, digests: [ChunkDigest], reader: ChunkReader, buffer: UnsafeMutableRawBufferPointer,
                        builder: PackBuilder, into renamed: FixedIndexBuilder) throws -> UInt64 {
        var located: [(chunk: Int, location: ChunkLocation)] = []
        for c in 0..<digests.count where digests[c] != .zero {
            located.append((c, try locate(c, of: run, digests: digests, reader: reader)))
        }
        located.sort(by: Self.inStoreOrder)
        try read(located, of: run, digests: digests, reader: reader, into: buffer)
        var names = [UInt8](repeating: 0, count: digests.count * 32)
        var copied: UInt64 = 0, bytes: UInt64 = 0
        for c in located.map(\.chunk).sorted() {
            let chunk = UnsafeRawBufferPointer(slot(c, of: run, in: buffer))
            let name = writer.repository.chunkIdentity.digest(of: chunk)
            if try writer.claim(name) {
                try builder.add(name, chunk)
                copied += 1
                bytes += UInt64(chunk.count)
            }
            names.withUnsafeMutableBytes { out in
                name.withBytes { UnsafeMutableRawBufferPointer(rebasing: out[c * 32..<(c + 1) * 32]).copyMemory(from: $0) }
            }
        }
        try builder.endBlock()
        try names.withUnsafeBytes { try renamed.write(entries: $0, firstChunk: run.first) }
        counters.chunksCopied.wrappingAdd(copied, ordering: .relaxed)
        counters.chunksPresent.wrappingAdd(UInt64(located.count) - copied, ordering: .relaxed)
        return counters.bytesCopied.wrappingAdd(bytes, ordering: .relaxed).newValue
    }

    /// Where chunk `c` of `run` is stored in the source (an error names its place in the disk).
    private func locate(_ c: Int, of run: ChunkRun, digests: [ChunkDigest], reader: ChunkReader) throws -> ChunkLocation {
        try snapshot.naming(chunkAt: snapshot.chunkRange(run.first + UInt64(c)).start) { try reader.locate(digests[c]) }
    }

    /// The source's store order: pack, block, place in the block.
    private static func inStoreOrder(_ a: (chunk: Int, location: ChunkLocation), _ b: (chunk: Int, location: ChunkLocation)) -> Bool {
        (a.location.pack, a.location.offset, a.location.blockOffset) < (b.location.pack, b.location.offset, b.location.blockOffset)
    }

    /// Reads `chunks` (in store order: a block is decompressed once), each verified, into
    /// their slots of `buffer`.
    private func read(_ chunks: [(chunk: Int, location: ChunkLocation)], of run: ChunkRun, digests: [ChunkDigest], reader: ChunkReader,
                      into buffer: UnsafeMutableRawBufferPointer) throws {
        for (k, (c, location)) in chunks.enumerated() {
            try snapshot.naming(chunkAt: snapshot.chunkRange(run.first + UInt64(c)).start) {
                try reader.readAhead(chunks[k...].lazy.map(\.location))
                try reader.read(digests[c], at: location, into: slot(c, of: run, in: buffer))
            }
        }
    }

    /// Chunk `c` of `run` in the run's buffer.
    private func slot(_ c: Int, of run: ChunkRun, in buffer: UnsafeMutableRawBufferPointer) -> UnsafeMutableRawBufferPointer {
        let range = snapshot.chunkRange(run.first + UInt64(c))
        let chunkSize = Int(snapshot.chunkSize)
        return UnsafeMutableRawBufferPointer(rebasing: buffer[c * chunkSize..<c * chunkSize + Int(range.count)])
    }

    /// Stores one source block as it is stored, when `block` (the wanted chunks located in it,
    /// by block offset) covers all of it and the target would store it so; each chunk is
    /// verified against its digest first. False: the chunks go over one by one.
    private func passOn(_ block: [(chunk: Int, location: ChunkLocation)], run: ChunkRun, digests: [ChunkDigest],
                        reader: ChunkReader, builder: PackBuilder) throws -> Bool {
        let first = block[0].location
        guard first.encoding == .raw || sameCompression else { return false }
        var covered: UInt32 = 0
        for (_, location) in block {
            guard location.blockOffset == covered else { return false }  // a gap: a chunk not wanted here
            covered += location.rawLength
        }
        if first.encoding == .raw && covered != first.storedLength - (packs.repository.isEncrypted ? UInt32(PackFormat.sealedOverhead) : 0) { return false }
        return try snapshot.naming(chunkAt: snapshot.chunkRange(run.first + UInt64(block[0].chunk)).start) {
            try reader.withBlock(at: first) { stored, decoded in
                guard decoded.count == Int(covered) else { return false }
                for (c, location) in block {
                    let start = Int(location.blockOffset)
                    guard packs.repository.chunkIdentity.digest(of: UnsafeRawBufferPointer(rebasing: decoded[start..<start + Int(location.rawLength)])) == digests[c] else {
                        throw StoreError(.chunkCorrupt, "chunk \(digests[c]) in pack \(packs.packID(location.pack)) at offset \(location.offset): content does not match its digest")
                    }
                }
                try builder.addStoredBlock(stored, encoding: first.encoding,
                                           chunks: block.map { (digests[$0.chunk], $0.location.rawLength, $0.location.blockOffset) })
                return true
            }
        }
    }
}
