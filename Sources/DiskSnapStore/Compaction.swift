import DiskSnapSys
import DiskSnapFormat

/// Which index segments to merge so that their number stays bounded (a pure plan).
///
/// Every create publishes one segment. Past `maximumSegments`, the smallest are merged: at
/// least enough to come back to the limit, and further while the next one is no larger than
/// what is merged so far, so a chunk's entry is rewritten about log(N) times over the store's
/// life, not once per create. Version 1-2 segments (loaded whole into memory) are always
/// merged: the first compaction rewrites them as version 3.
public enum CompactionPolicy {
    public static let maximumSegments = 8
    static let maximumEntries = SortedSegmentFormat.maximumEntries

    /// Indices into `sizes` (entry counts) to merge into one; empty when nothing is due.
    public static func plan(sizes: [UInt64], legacy: [Bool], limit: Int = maximumSegments) -> [Int] {
        precondition(sizes.count == legacy.count && limit >= 1)
        let order = sizes.indices.sorted { (sizes[$0], $0) < (sizes[$1], $1) }
        var chosen: [Int] = []
        if sizes.count > limit {
            var k = sizes.count - limit + 1
            var merged = order[..<k].reduce(UInt64(0)) { $0 + sizes[$1] }
            while k < order.count && sizes[order[k]] <= merged && merged + sizes[order[k]] <= maximumEntries {
                merged += sizes[order[k]]
                k += 1
            }
            // A segment holds at most 2^28 entries: past that, more segments (slower lookups).
            chosen = merged <= maximumEntries ? Array(order[..<k]) : []
        }
        let old = sizes.indices.filter { legacy[$0] && !chosen.contains($0) }
        return (chosen + old).sorted()
    }
}

public struct CompactionResult: Sendable {
    public var segmentsMerged = 0
    public var entries: UInt64 = 0
    public init(segmentsMerged: Int = 0, entries: UInt64 = 0) {
        self.segmentsMerged = segmentsMerged
        self.entries = entries
    }
}

/// Applies `CompactionPolicy` to a repository's index. The caller holds `locks/gc.lock`, so
/// no gc replaces segments meanwhile. Write order: the merged segment is published (fsynced,
/// renamed, directory fsynced) before its inputs are removed; a crash between leaves the same
/// entries twice, which is valid, and the next compaction merges them. Readers that listed the
/// old segments either have them open (still readable once removed) or find one gone and list
/// again (`ChunkLocator.open`).
public enum IndexCompactor {
    public static func compact(_ repository: Repository, limit: Int = CompactionPolicy.maximumSegments) throws -> CompactionResult {
        let locator = try ChunkLocator.open(repository)
        let segments = locator.openSegments
        let plan = CompactionPolicy.plan(sizes: segments.map(\.entryCount), legacy: segments.map { $0 is LegacySegment }, limit: limit)
        guard !plan.isEmpty else { return CompactionResult() }
        let inputs = plan.map { segments[$0] }
        // In a work area: removed on every path, and after a crash by the next writer (its lock
        // is free), with a merged segment that was not published.
        let area = try TemporaryArea(repository: repository)
        defer { area.remove() }
        let temporary = area.path("compacted.idx")
        let merged = try SegmentMerge.merge(inputs, to: temporary)
        if merged.entries > 0 { try repository.publishSegment(temporary) }
        try repository.removeSegments(inputs.map { FileSystem.baseName(of: $0.path) })
        return CompactionResult(segmentsMerged: inputs.count, entries: merged.entries)
    }
}
