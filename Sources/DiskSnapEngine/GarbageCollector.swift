import Foundation
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog

public struct GCRequest: Sendable {
    public var dryRun = false
    /// A pack whose live share of raw bytes falls below this is rewritten (its live chunks
    /// copied to a new pack, the pack removed).
    public var liveThreshold = 0.8
    public init() {}
}

public struct GCResult: Sendable {
    public var dryRun = false
    /// The generation condemned by this run (0 when nothing was condemned).
    public var generation: UInt64 = 0
    public var packsCondemned = 0
    /// Raw bytes of dead chunks in the condemned packs, and of live ones to copy.
    public var deadBytes: UInt64 = 0
    public var liveBytesToCopy: UInt64 = 0
    public var packsRemoved = 0
    public var segmentsReplaced = 0
    public var chunksCopied: UInt64 = 0
    public var orphanFixedIndexesRemoved = 0
    /// Bytes of files removed minus bytes of files written.
    public var bytesFreed: Int64 = 0
    /// Why condemned packs are still there, when they are.
    public var deferred: String?
    public var seconds: Double = 0
}

/// Removes chunks no snapshot references, in two steps that never remove a chunk a running
/// snapshot may rely on (docs/DESIGN.md, "Garbage collection"):
///
/// 1. Condemn: mark every chunk of every accomplished snapshot (a Bloom filter: a few MiB per
///    million chunks), pick the packs whose live share is below the threshold (and packs no
///    index segment names), and publish `gc.json` under the catalog lock with the snapshots
///    being created at that moment. Writers that start later never rely on condemned packs.
/// 2. Sweep, once every snapshot in `waitingFor` has ended (at once when there was none):
///    mark again, copy the condemned packs' live chunks to new packs, and, holding the
///    readers lock exclusively, replace the index segments by one without the condemned
///    packs and remove those packs.
public struct GarbageCollector {
    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    public func run(_ request: GCRequest) throws -> GCResult {
        let repositoryLock = try repository.lock(.shared, for: "gc")
        defer { withExtendedLifetime(repositoryLock) {} }
        guard let gcLock = try repository.tryLock(name: "gc") else {
            throw EngineError(code: "Repository.GCRunning", "another gc is running on \(repository.root)", exitStatus: .busy)
        }
        defer { withExtendedLifetime(gcLock) {} }
        let clock = Progress(label: "gc", total: 0, visible: false)
        var result = GCResult()
        result.dryRun = request.dryRun

        if let pending = try repository.gcState() {
            let running = pending.waitingFor.filter { isRunning($0) }
            guard running.isEmpty else {
                result.deferred = "waiting for the creation of \(running.joined(separator: ", ")) to end"
                result.generation = pending.generation
                result.seconds = clock.elapsedSeconds
                return result
            }
            if request.dryRun {
                result.deferred = "generation \(pending.generation) (\(pending.condemnedPacks.count) packs) would be swept"
            } else {
                try sweep(pending, mark: try mark().filter, into: &result)
                if result.deferred != nil {
                    result.seconds = clock.elapsedSeconds
                    return result
                }
            }
        }

        // Condemn.
        let marked = try mark()
        let plan = try condemnationPlan(marked.filter, threshold: request.liveThreshold)
        result.packsCondemned = plan.packs.count
        result.deadBytes = plan.deadBytes
        result.liveBytesToCopy = plan.liveBytes
        guard !request.dryRun, !plan.packs.isEmpty || !plan.unindexed.isEmpty else {
            result.seconds = clock.elapsedSeconds
            return result
        }
        let state: GCState
        do {
            let catalogLock = try repository.lockCatalog()
            defer { withExtendedLifetime(catalogLock) {} }
            let records = try Catalog(repository: repository).records().records
            // Running creations, and snapshots that became accomplished after the mark read
            // the records: their references are not in this mark.
            let waiting = records.filter {
                ($0.status == .progressing && isRunning($0.snapshotId.rawValue))
                    || ($0.status == .accomplished && !marked.snapshots.contains($0.snapshotId))
            }.map(\.snapshotId.rawValue)
            state = GCState(generation: (try repository.gcState()?.generation ?? 0) + 1, condemnedPacks: plan.packs.map(\.hex),
                            waitingFor: waiting, unindexedPacks: plan.unindexed.map(\.hex))
            try repository.publish(RecordJSON.encode(state), to: repository.gcStatePath)
        }
        result.generation = state.generation
        TestHooks.pause(at: "gc-after-condemn")
        if state.waitingFor.isEmpty {
            try sweep(state, mark: marked.filter, into: &result)
        } else {
            result.deferred = "waiting for the creation of \(state.waitingFor.joined(separator: ", ")) to end (run gc again)"
        }
        result.seconds = clock.elapsedSeconds
        return result
    }

    private func isRunning(_ snapshotID: String) -> Bool {
        guard let id = SnapshotID(snapshotID) else { return false }
        return repository.isLockHeld(name: Catalog.creationLockName(id))
    }

    /// Every chunk of every accomplished snapshot, and which snapshots were read. A fixed
    /// index that cannot be read stops gc: a partial mark would condemn live chunks.
    func mark() throws -> (filter: DigestFilter, snapshots: Set<SnapshotID>) {
        let records = try Catalog(repository: repository).records()
        if let damaged = records.damaged.first {
            throw EngineError(code: "Repository.Corrupt", "gc stops: a snapshot record is damaged (\(damaged.message)); run check", exitStatus: .corrupt)
        }
        let accomplished = records.records.filter { $0.status == .accomplished }
        // A damaged snapshot's remaining chunks are kept too (mount can still read them);
        // one whose fixed index is gone has nothing left to mark.
        let damaged = records.records.filter { $0.status == .damaged && FileSystem.exists(repository.fixedIndexPath($0.snapshotId)) }
        let expected = (accomplished + damaged).reduce(0) { $0 + Int($1.chunkCount) }
        var filter = DigestFilter(expected: expected)
        for record in accomplished + damaged {
            let fixed: FixedIndexReader
            do {
                fixed = try FixedIndexReader(path: repository.fixedIndexPath(record.snapshotId))
            } catch let error as any CodedError {
                if record.status == .damaged { continue }
                throw ContextError(underlying: error, context: "gc stops: snapshot \(record.snapshotId) cannot be marked")
            }
            try fixed.forEach { _, digest in if !digest.isZero { filter.insert(digest) } }
        }
        return (filter, Set(accomplished.map(\.snapshotId)))
    }

    struct Plan {
        var packs: [PackID] = []
        var unindexed: [PackID] = []
        var deadBytes: UInt64 = 0
        var liveBytes: UInt64 = 0
    }

    /// Packs whose live share of raw bytes is under `threshold`. A chunk counts as live in a
    /// pack only where the index would read it (its first copy): other copies are dead.
    func condemnationPlan(_ filter: DigestFilter, threshold: Double) throws -> Plan {
        let index = try ChunkIndex.load(from: repository)
        var live: [PackID: UInt64] = [:], total: [PackID: UInt64] = [:]
        for name in try repository.indexSegmentNames() {
            let path = "\(repository.indexDirectory)/\(name)"
            let segment = try ChunkIndexFormat.decode(try FileSystem.readFile(path), file: path)
            for e in segment.entries {
                let pack = segment.packs[Int(e.pack)]
                total[pack, default: 0] += UInt64(e.rawLength)
                if filter.mayContain(e.digest), let at = index.location(of: e.digest),
                   index.packs[Int(at.pack)] == pack, at.offset == e.offset, at.blockOffset == e.blockOffset {
                    live[pack, default: 0] += UInt64(e.rawLength)
                }
            }
        }
        var plan = Plan()
        for (pack, bytes) in total.sorted(by: { $0.key.hex < $1.key.hex }) where bytes > 0 {
            let alive = live[pack] ?? 0
            if Double(alive) < threshold * Double(bytes) {
                plan.packs.append(pack)
                plan.deadBytes += bytes - alive
                plan.liveBytes += alive
            }
        }
        plan.unindexed = try repository.packIDs().filter { total[$0] == nil }
        return plan
    }

    /// Copies the live chunks of `state`'s packs, then (readers excluded) replaces the index
    /// segments and removes the packs, orphan fixed indexes and `gc.json`.
    func sweep(_ state: GCState, mark filter: DigestFilter, into result: inout GCResult) throws {
        let condemned = Set(state.condemnedPacks.compactMap(PackID.init(hex:)))
        let index = try ChunkIndex.load(from: repository)
        // 1. Live chunks of condemned packs, in pack order, to new packs.
        var copies: [(digest: ChunkDigest, location: ChunkLocation)] = []
        for (digest, location) in index.entries where condemned.contains(index.packs[Int(location.pack)]) && filter.mayContain(digest) {
            copies.append((digest, location))
        }
        copies.sort { ($0.location.pack, $0.location.offset, $0.location.blockOffset) < ($1.location.pack, $1.location.offset, $1.location.blockOffset) }
        var written: UInt64 = 0
        if !copies.isEmpty {
            let area = try TemporaryArea(repository: repository)
            defer { area.remove() }
            let writer = ChunkWriter(repository: repository, index: ChunkIndex(), area: area)
            let builder = writer.makePackBuilder(compression: repository.config.compression, blockCapacity: max(Snapshotter.blockBytes, Int(repository.config.chunkSize.bytes)))
            let reader = ChunkReader(index: index, packs: PackFiles(repository: repository, index: index))
            // The builder keeps pointers to the chunks until the block ends: they are read
            // back to back into a block-sized buffer, which is reused only after endBlock.
            let capacity = max(Snapshotter.blockBytes, Int(repository.config.chunkSize.bytes))
            let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 64)
            defer { staging.deallocate() }
            var used = 0
            for (digest, location) in copies {
                let count = Int(location.rawLength)
                if used + count > capacity {
                    try builder.endBlock()
                    used = 0
                }
                let chunk = UnsafeMutableRawBufferPointer(rebasing: staging[used..<used + count])
                try reader.read(digest, at: location, into: chunk)
                try builder.add(digest, UnsafeRawBufferPointer(chunk))
                used += count
            }
            try builder.endBlock()
            try builder.finish()
            let summary = try writer.finish()
            result.chunksCopied = summary.chunksStored
            written = summary.bytesStored
        }
        // 2. No reader may hold the old locations while segments and packs change.
        guard let readers = try FileLock.tryAcquire(path: repository.locksDirectory + "/readers.lock", kind: .exclusive) else {
            result.deferred = "packs kept: a restore, diff, mount, export or check is reading (run gc again when it has ended)"
            result.bytesFreed -= Int64(written)
            return
        }
        defer { withExtendedLifetime(readers) {} }
        // 3. One segment with every entry outside the condemned packs (first copy of each
        //    digest), published before the segments it replaces are removed.
        let names = try repository.indexSegmentNames()
        var merged = ChunkIndexFormat.Segment(packs: [], entries: [])
        var ordinals: [PackID: UInt32] = [:]
        var seen = Set<ChunkDigest>()
        var replacedBytes: UInt64 = 0
        for name in names {
            let path = "\(repository.indexDirectory)/\(name)"
            let bytes = try FileSystem.readFile(path)
            replacedBytes += UInt64(bytes.count)
            let segment = try ChunkIndexFormat.decode(bytes, file: path)
            for e in segment.entries {
                let pack = segment.packs[Int(e.pack)]
                guard !condemned.contains(pack), seen.insert(e.digest).inserted else { continue }
                var entry = e
                if let known = ordinals[pack] {
                    entry.pack = known
                } else {
                    entry.pack = UInt32(merged.packs.count)
                    ordinals[pack] = entry.pack
                    merged.packs.append(pack)
                }
                merged.entries.append(entry)
            }
        }
        var newSegmentBytes: UInt64 = 0
        if !merged.entries.isEmpty {
            let bytes = ChunkIndexFormat.encode(merged)
            _ = try ChunkIndexFormat.decode(bytes, file: "new index segment")  // decode what we publish
            let name = PackID.generate().hex + ".idx"
            try repository.publish(bytes, to: "\(repository.indexDirectory)/\(name)")
            newSegmentBytes = UInt64(bytes.count)
        }
        for name in names { try FileSystem.removeIfExists("\(repository.indexDirectory)/\(name)") }
        try FileSystem.syncDirectory(repository.indexDirectory)
        result.segmentsReplaced = names.count
        // 4. The condemned packs, and unindexed packs that no segment has named since.
        var removedBytes: UInt64 = 0
        let named = Set(merged.packs)
        let unindexed = Set(state.unindexedPacks.compactMap(PackID.init(hex:))).subtracting(named)
        for pack in condemned.union(unindexed) {
            let path = repository.packPath(pack)
            if let status = try FileSystem.statusIfExists(path) {
                removedBytes += status.size
                try FileSystem.remove(path)
                result.packsRemoved += 1
            }
        }
        try FileSystem.syncDirectory(repository.packsDirectory)
        // 5. Fixed indexes no record owns (a delete killed between its two steps).
        let records = Set(try FileSystem.listDirectory(repository.snapshotsDirectory).filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) })
        for name in try FileSystem.listDirectory(repository.fixedIndexDirectory) where name.hasSuffix(".fidx") && !records.contains(String(name.dropLast(5))) {
            let path = "\(repository.fixedIndexDirectory)/\(name)"
            removedBytes += (try FileSystem.statusIfExists(path))?.size ?? 0
            try FileSystem.remove(path)
            result.orphanFixedIndexesRemoved += 1
        }
        try FileSystem.removeIfExists(repository.gcStatePath)
        try FileSystem.syncDirectory(repository.root)
        result.bytesFreed += Int64(removedBytes + replacedBytes) - Int64(written + newSegmentBytes)
    }
}
