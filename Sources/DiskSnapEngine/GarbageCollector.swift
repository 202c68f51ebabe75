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
    /// Index segments merged into one by the compaction that ends every gc.
    public var segmentsCompacted = 0
    /// In a bucket: leases killed creations left behind, removed once run out.
    public var deadLeasesRemoved = 0
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
            throw EngineError(code: "Repository.GCRunning", "another gc, or the index compaction that ends a create, is running on \(repository.location); try again", exitStatus: .busy)
        }
        defer { withExtendedLifetime(gcLock) {} }
        let clock = Progress(label: "gc", total: 0, observer: nil)
        var result = try collect(request)
        if !request.dryRun {
            // The segment count stays bounded (gc.lock is held: nothing else replaces segments).
            let compaction = try IndexCompactor.compact(repository)
            result.segmentsCompacted = compaction.segmentsMerged
            result.deadLeasesRemoved = try repository.removeDeadCreationLeases()
        }
        result.seconds = clock.elapsedSeconds
        return result
    }

    private func collect(_ request: GCRequest) throws -> GCResult {
        var result = GCResult()
        result.dryRun = request.dryRun

        if let pending = try repository.gcState() {
            let running = try pending.waitingFor.filter { try isRunning($0) }
            guard running.isEmpty else {
                result.deferred = "waiting for the creation of \(running.joined(separator: ", ")) to end"
                result.generation = pending.generation
                return result
            }
            if request.dryRun {
                result.deferred = "generation \(pending.generation) (\(pending.condemnedPacks.count) packs) would be swept"
            } else {
                try sweep(pending, mark: try mark().filter, into: &result)
                if result.deferred != nil {
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
            return result
        }
        let state: GCState
        do {
            let catalogLock = try repository.lockCatalog()
            defer { withExtendedLifetime(catalogLock) {} }
            let records = try Catalog(repository: repository).records().records
            // Running creations, and snapshots that became accomplished after the mark read
            // the records: their references are not in this mark.
            let waiting = try records.filter {
                try ($0.status == .progressing && isRunning($0.snapshotId.rawValue))
                    || ($0.status == .accomplished && !marked.snapshots.contains($0.snapshotId))
            }.map(\.snapshotId.rawValue)
            state = GCState(generation: (try repository.gcState()?.generation ?? 0) + 1, condemnedPacks: plan.packs.map(\.hex),
                            waitingFor: waiting, unindexedPacks: plan.unindexed.map(\.hex))
            try repository.writeGCState(RecordJSON.encode(state))
        }
        result.generation = state.generation
        TestHooks.pause(at: "gc-after-condemn")
        if state.waitingFor.isEmpty {
            try sweep(state, mark: marked.filter, into: &result)
        } else {
            result.deferred = "waiting for the creation of \(state.waitingFor.joined(separator: ", ")) to end (run gc again)"
        }
        return result
    }

    /// Whether the creation of `snapshotID` is still running. A lock gc cannot probe stops
    /// gc before it removes anything (the error names the lock): the creation might still
    /// rely on the packs it would sweep. An id that does not parse was never a creation.
    private func isRunning(_ snapshotID: String) throws -> Bool {
        guard let id = SnapshotID(snapshotID) else { return false }
        do {
            return try repository.isLockHeld(name: Catalog.creationLockName(id))
        } catch {
            throw ContextError(underlying: error, context: "gc stops before removing anything")
        }
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
                fixed = try FixedIndexReader(repository, record.snapshotId)
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

    /// Packs whose live share of raw bytes is under `threshold`, reading one index segment at
    /// a time. A digest's first copy (in segment order) counts as live where marked; later
    /// copies are dead. The "seen" test is a Bloom filter too: its false positives count a
    /// live chunk as dead here, which only makes its pack more likely to be condemned; the
    /// sweep copies every marked chunk of a condemned pack regardless.
    func condemnationPlan(_ filter: DigestFilter, threshold: Double) throws -> Plan {
        let segments = try ChunkLocator.open(repository).openSegments
        var seen = DigestFilter(expected: Int(segments.reduce(0) { $0 + $1.entryCount }))
        var live: [PackID: UInt64] = [:], total: [PackID: UInt64] = [:]
        for segment in segments {
            for pack in segment.packs { total[pack] = total[pack] ?? 0 }
            try segment.forEach { e in
                let pack = segment.packs[Int(e.pack)]
                total[pack, default: 0] += UInt64(e.rawLength)
                if filter.mayContain(e.digest) && !seen.mayContain(e.digest) {
                    live[pack, default: 0] += UInt64(e.rawLength)
                }
                seen.insert(e.digest)
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
    /// segments that name them and removes the packs, orphan fixed indexes and `gc.json`.
    /// Memory: the mark filter, one pack's table of contents and one segment at a time.
    func sweep(_ state: GCState, mark filter: DigestFilter, into result: inout GCResult) throws {
        let condemned = Set(state.condemnedPacks.compactMap(PackID.init(hex:)))
        // 1. Each condemned pack's marked chunks, read from its own table of contents and
        //    verified against their digests, to new packs (published with their segment).
        var written: UInt64 = 0
        let present = try condemned.filter { try repository.packSize($0) != nil }
        if !present.isEmpty {
            let area = try TemporaryArea(repository: repository)
            defer { area.remove() }
            let capacity = max(Snapshotter.blockBytes, Int(repository.config.chunkSize.bytes))
            let writer = ChunkWriter(repository: repository, store: ChunkLocator(), area: area)
            let builder = writer.makePackBuilder(compression: repository.config.compression, blockCapacity: capacity)
            let decoder = BlockDecoder(repository: repository)
            // The builder keeps pointers to the chunks until the block ends: they are read
            // back to back into a block-sized buffer, which is reused only after endBlock.
            let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 64)
            defer { staging.deallocate() }
            var used = 0
            for pack in present.sorted(by: { $0.hex < $1.hex }) {
                let file: any PackData
                let toc: [PackEntry]
                do {
                    file = try repository.openPack(pack)
                    toc = try PackReader.tableOfContents(file, pack: pack, repository: repository)
                } catch let error as any CodedError {
                    throw ContextError(underlying: error, context: "gc stops before removing anything: condemned pack \(pack) cannot be read (run check)")
                }
                for e in toc.sorted(by: { ($0.offset, $0.blockOffset) < ($1.offset, $1.blockOffset) })
                where try filter.mayContain(e.digest) && writer.claim(e.digest) {
                    let count = Int(e.rawLength)
                    if used + count > capacity {
                        try builder.endBlock()
                        used = 0
                    }
                    let chunk = UnsafeMutableRawBufferPointer(rebasing: staging[used..<used + count])
                    try decoder.read(e, pack: pack, file: file, into: chunk)
                    try builder.add(e.digest, UnsafeRawBufferPointer(chunk))
                    used += count
                }
            }
            try builder.endBlock()
            try builder.finish()
            let summary = try writer.finish()
            result.chunksCopied = summary.chunksStored
            written = summary.bytesStored
        }
        // 2. No reader may hold the old locations while segments and packs change.
        guard let readers = try repository.tryExcludeReaders() else {
            result.deferred = "packs kept: a restore, diff, mount, export or check is reading (run gc again when it has ended)"
            result.bytesFreed -= Int64(written)
            return
        }
        defer { withExtendedLifetime(readers) {} }
        // 3. Each segment that names a condemned pack is replaced by one without its entries,
        //    published before the old one is removed (a crash between: the same locations
        //    twice, which is valid).
        var named = Set<PackID>()
        var replacedBytes: UInt64 = 0, newSegmentBytes: UInt64 = 0
        let rewriteArea = try TemporaryArea(repository: repository)
        defer { rewriteArea.remove() }
        var replaced: [String] = []
        for name in try repository.indexSegmentNames() {
            let path = repository.segmentPath(name)
            let segment = try IndexSegments.open(file: repository.openSegment(name))
            guard segment.packs.contains(where: { condemned.contains($0) }) else {
                named.formUnion(segment.packs)
                continue
            }
            // The entries outside condemned packs, merged (streaming) into a new version 3
            // segment, read back, then renamed into place.
            let temporary = rewriteArea.path(name)
            let kept = try SegmentMerge.merge([segment], to: temporary, dropping: condemned)
            if kept.entries > 0 {
                newSegmentBytes += try FileSystem.status(temporary).size
                named.formUnion(segment.packs.filter { !condemned.contains($0) })
                try repository.publishSegment(temporary)
            }
            replacedBytes += try FileSystem.status(path).size
            replaced.append(name)
        }
        try repository.removeSegments(replaced)
        result.segmentsReplaced = replaced.count
        // 4. The condemned packs, and unindexed packs that no segment has named since.
        let unindexed = Set(state.unindexedPacks.compactMap(PackID.init(hex:))).subtracting(named)
        let removed = try repository.removePacks(condemned.union(unindexed))
        var removedBytes = removed.bytes
        result.packsRemoved += removed.count
        // 5. Fixed indexes no record owns (a delete killed between its two steps).
        let records = Set(try repository.recordIDs())
        for id in try repository.fixedIndexIDs() where !records.contains(id) {
            removedBytes += try repository.removeFixedIndex(id)
            result.orphanFixedIndexesRemoved += 1
        }
        try repository.removeGCState()
        result.bytesFreed += Int64(removedBytes + replacedBytes) - Int64(written + newSegmentBytes)
    }
}
