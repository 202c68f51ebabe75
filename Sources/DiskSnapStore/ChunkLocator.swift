#if canImport(Glibc)
import Glibc
#endif
import DiskSnapSys
import DiskSnapFormat

/// Where one stored chunk lies: the block holding it (pack, offset, stored length,
/// encoding) and its place in the decoded block.
public struct ChunkLocation: Sendable, Equatable {
    /// Position in `ChunkLocator.packs`.
    public var pack: UInt32
    public var storedLength: UInt32
    public var offset: UInt64
    public var rawLength: UInt32
    public var encoding: ChunkEncoding
    public var blockOffset: UInt32

    public init(pack: UInt32, storedLength: UInt32, offset: UInt64, rawLength: UInt32, encoding: ChunkEncoding, blockOffset: UInt32 = 0) {
        self.pack = pack
        self.storedLength = storedLength
        self.offset = offset
        self.rawLength = rawLength
        self.encoding = encoding
        self.blockOffset = blockOffset
    }
}

/// The chunk index as a command sees it: every segment under `index/`, opened (header, pack
/// table and fanout in memory) but not loaded. A lookup probes each segment's Bloom filter
/// (one 64-byte read; a small filter is kept once read) and reads the one or two pages the
/// fanout names only on a "maybe": a
/// digest is present only when a verified entry carries the full 32-byte digest. Memory is
/// the pack table (16 bytes per pack) and ~4 bytes per 63 entries of fanout, whatever the
/// store's size, plus small Bloom filters (version 1-2 segments are loaded whole until
/// compaction rewrites them).
///
/// Unchanged while a command runs; thread-safe.
public final class ChunkLocator: Sendable {
    public let packs: [PackID]
    private let segments: [any IndexSegment]
    /// Per segment: its pack ordinals in `packs`, nil for an excluded (condemned) pack.
    private let ordinals: [[UInt32?]]

    /// An empty locator (a writer that dedups only against itself).
    public convenience init() { self.init(segments: [], excluding: []) }

    public init(segments: [any IndexSegment], excluding: Set<PackID>) {
        var packs: [PackID] = [], known: [PackID: UInt32] = [:]
        var ordinals: [[UInt32?]] = []
        for segment in segments {
            ordinals.append(segment.packs.map { pack in
                if excluding.contains(pack) { return nil }
                if let ordinal = known[pack] { return ordinal }
                let ordinal = UInt32(packs.count)
                packs.append(pack)
                known[pack] = ordinal
                return ordinal
            })
        }
        self.packs = packs
        self.segments = segments
        self.ordinals = ordinals
    }

    /// Opens every segment of the repository. A segment that does not parse fails the open:
    /// the caller (`check`) reports it; others refuse to work on top of a damaged index.
    ///
    /// A writer passes the packs a pending garbage collection condemned as `excluding`: their
    /// chunks are invisible to it, so it stores its own copies instead of relying on chunks
    /// that may be removed under it (docs/DESIGN.md, "Garbage collection").
    ///
    /// gc and compaction replace segments while others run (publishing the replacement before
    /// removing the old one): a segment that vanishes between the listing and its open means
    /// the listing is stale, and the open starts over from a new one. An opened segment stays
    /// readable after it is removed.
    public static func open(_ repository: Repository, excluding: Set<PackID> = []) throws -> ChunkLocator {
        var attempt = 0
        while true {
            do {
                let segments = try repository.indexSegmentNames().sorted().map { name in
                    try IndexSegments.open(file: repository.openSegment(name))
                }
                return ChunkLocator(segments: segments, excluding: excluding)
            } catch let error as SystemError where error.errno == ENOENT && attempt < 10 {
                attempt += 1
            }
        }
    }

    public var segmentCount: Int { segments.count }
    /// Entries of all segments (a chunk two writers stored is counted twice until compaction).
    public var entryCount: UInt64 { segments.reduce(0) { $0 + $1.entryCount } }
    public var storedBytes: UInt64 { segments.reduce(0) { $0 + $1.storedBytes } }
    public var rawBytes: UInt64 { segments.reduce(0) { $0 + $1.rawBytes } }
    public var hasLegacySegments: Bool { segments.contains { $0 is LegacySegment } }

    /// Where `digest` is stored (its first copy outside excluded packs), nil when it is not.
    public func location(of digest: ChunkDigest) throws -> ChunkLocation? {
        for (s, segment) in segments.enumerated() where try segment.mayContain(digest) {
            for e in try segment.copies(of: digest) {
                guard let pack = ordinals[s][Int(e.pack)] else { continue }
                return ChunkLocation(pack: pack, storedLength: e.storedLength, offset: e.offset, rawLength: e.rawLength,
                                     encoding: e.encoding, blockOffset: e.blockOffset)
            }
        }
        return nil
    }

    public func contains(_ digest: ChunkDigest) throws -> Bool { try location(of: digest) != nil }

    /// Every copy of `digest` in every segment, with its pack (`check`).
    public func copies(of digest: ChunkDigest) throws -> [(pack: PackID, entry: ChunkIndexFormat.Entry)] {
        var found: [(PackID, ChunkIndexFormat.Entry)] = []
        for segment in segments where try segment.mayContain(digest) {
            for e in try segment.copies(of: digest) { found.append((segment.packs[Int(e.pack)], e)) }
        }
        return found
    }

    /// Every entry of every segment with its pack, segment by segment (not in one digest order).
    public func forEachEntry(_ body: (PackID, ChunkIndexFormat.Entry) throws -> Void) throws {
        for segment in segments {
            try segment.forEach { e in try body(segment.packs[Int(e.pack)], e) }
        }
    }

    public var openSegments: [any IndexSegment] { segments }
}

/// Streaming k-way merges of sorted segments: a writer's spilled runs into its segment,
/// compaction of many segments into one, gc's rewrite without condemned packs, repair's rebuild.
/// Memory: one batch of pages per input and the output's Bloom filter.
public enum SegmentMerge {
    public struct Result: Sendable {
        public var entries: UInt64 = 0
        public var packs = 0
    }

    /// Calls `body` with every entry of `inputs` in digest order (ties in input order), and the
    /// entry's pack; entries of `dropping` packs are left out; with `unique`, only the first
    /// entry of each digest.
    public static func forEachMerged(_ inputs: [any IndexSegment], dropping: Set<PackID> = [], unique: Bool = false,
                                     _ body: (PackID, ChunkIndexFormat.Entry) throws -> Void) throws {
        let cursors = inputs.map { $0.cursor() }
        var heads: [ChunkIndexFormat.Entry?] = try cursors.map { try $0.next() }
        // A binary heap of input positions ordered by (digest, input).
        var heap: [Int] = heads.indices.filter { heads[$0] != nil }
        func less(_ a: Int, _ b: Int) -> Bool {
            let x = heads[a]!.digest, y = heads[b]!.digest
            return x < y || (x == y && a < b)
        }
        func siftDown(_ start: Int) {
            var i = start
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < heap.count && less(heap[l], heap[m]) { m = l }
                if r < heap.count && less(heap[r], heap[m]) { m = r }
                if m == i { return }
                heap.swapAt(i, m)
                i = m
            }
        }
        for i in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(i) }
        var last: ChunkDigest?
        while let top = heap.first {
            let entry = heads[top]!
            let pack = inputs[top].packs[Int(entry.pack)]
            if !dropping.contains(pack) && !(unique && last == entry.digest) {
                try body(pack, entry)
                last = entry.digest
            }
            heads[top] = try cursors[top].next()
            if heads[top] == nil {
                heap[0] = heap[heap.count - 1]
                heap.removeLast()
            }
            if !heap.isEmpty { siftDown(0) }
        }
    }

    /// Merges `inputs` into a new version 3 segment at `path` (which must not exist), fsynced,
    /// read back whole before it is returned. The pack table holds the packs that keep entries.
    public static func merge(_ inputs: [any IndexSegment], to path: String, dropping: Set<PackID> = [],
                             unique: Bool = false, sync: Bool = true) throws -> Result {
        // The header comes first: count what stays (and which packs) unless nothing is dropped.
        var count: UInt64 = 0
        var used: [PackID] = [], seen = Set<PackID>()
        if dropping.isEmpty && !unique {
            count = inputs.reduce(0) { $0 + $1.entryCount }
            for input in inputs { for pack in input.packs where seen.insert(pack).inserted { used.append(pack) } }
        } else {
            try forEachMerged(inputs, dropping: dropping, unique: unique) { pack, _ in
                count += 1
                if seen.insert(pack).inserted { used.append(pack) }
            }
        }
        var ordinal: [PackID: UInt32] = [:]
        for (i, pack) in used.enumerated() { ordinal[pack] = UInt32(i) }
        let writer = try SortedSegmentWriter(path: path, packs: used, entryCount: count, sync: sync)
        do {
            try forEachMerged(inputs, dropping: dropping, unique: unique) { pack, entry in
                var e = entry
                e.pack = ordinal[pack]!
                try writer.append(e)
            }
            try writer.finish()
            // Read back what will be published (or used).
            let written = try SortedSegment(path: path)
            var n: UInt64 = 0
            try written.forEach { _ in n += 1 }
            guard n == count else { throw FormatError(file: path, "merged segment reads back \(n) entries, \(count) written") }
            try written.verifyBloom()
        } catch {
            try? FileSystem.removeIfExists(path)
            throw error
        }
        return Result(entries: count, packs: used.count)
    }
}
