#if canImport(Glibc)
import Glibc
#endif
import DiskSnapSys
import DiskSnapFormat
import Synchronization

/// One chunk index segment as the store reads it: sorted entries to look a digest up in and
/// to stream in digest order. Version 3 segments are read a page at a time (`SortedSegment`);
/// older ones are loaded whole and sorted (`LegacySegment`) until compaction rewrites them.
public protocol IndexSegment: Sendable {
    var path: String { get }
    var packs: [PackID] { get }
    var entryCount: UInt64 { get }
    var storedBytes: UInt64 { get }
    var rawBytes: UInt64 { get }
    /// False when the segment certainly has no entry for `digest` (no page is read).
    func mayContain(_ digest: ChunkDigest) throws -> Bool
    /// Every entry for `digest` (several only where two writers stored the same chunk), read
    /// from verified pages; empty when there is none. Never a partial match.
    func copies(of digest: ChunkDigest) throws -> [ChunkIndexFormat.Entry]
    /// Every entry in digest order (verified, and checked to be in order), a batch at a time.
    func forEach(_ body: (ChunkIndexFormat.Entry) throws -> Void) throws
    /// The same entries, pulled one at a time (k-way merges).
    func cursor() -> any SegmentCursor
}

public protocol SegmentCursor: AnyObject {
    /// The next entry in digest order, nil at the end.
    func next() throws -> ChunkIndexFormat.Entry?
}

public enum IndexSegments {
    /// Opens a plain segment file of any version (a work area's).
    public static func open(_ path: String) throws -> any IndexSegment { try open(file: try OpenFile(path: path)) }

    /// Opens a segment of any version read through `file` (a repository's: `Repository.openSegment`).
    public static func open(file: any RandomAccessReading) throws -> any IndexSegment {
        let head = try file.readBytes(count: 12, at: 0)
        var r = ByteReader(head, file: file.path)
        try r.expectMagic(ChunkIndexFormat.magic, what: "disksnap chunk index segment")
        let version: UInt32 = try r.read()
        if version == SortedSegmentFormat.version { return try SortedSegment(file: file) }
        return try LegacySegment(file: file)
    }
}

/// A version 3 segment: header, pack table and fanout in memory; pages read on demand and
/// verified against their checksums; the Bloom filter probed with one 64-byte read, or, when
/// it is at most `residentBloomBytes`, read whole at the first probe and kept.
public final class SortedSegment: IndexSegment {
    public let path: String
    public let header: SortedSegmentFormat.Header
    public let packs: [PackID]
    private let fanout: [UInt32]
    private let file: any RandomAccessReading
    /// A Bloom filter this small (800,000 entries) is kept in memory once probed: a tracked
    /// incremental probes every segment for each new chunk, a read each (2,400 per run here).
    public static let residentBloomBytes = 1 << 20
    private let residentBloom = Mutex<Result<[UInt8], any Error>?>(nil)
    private let keepsBloom: Bool
    /// Pages a stream (cursor, `forEach`) reads at once: 64 KiB per input of a k-way merge.
    static let pagesPerRead = 16

    public var entryCount: UInt64 { header.entryCount }
    public var storedBytes: UInt64 { header.storedBytes }
    public var rawBytes: UInt64 { header.rawBytes }

    /// `residentBloomBytes`: the largest Bloom filter kept in memory once probed.
    public convenience init(path: String, residentBloomBytes: Int = SortedSegment.residentBloomBytes) throws {
        try self.init(file: try OpenFile(path: path), residentBloomBytes: residentBloomBytes)
    }

    init(file: any RandomAccessReading, residentBloomBytes: Int = SortedSegment.residentBloomBytes) throws {
        self.file = file
        path = file.path
        let size = try file.size()
        guard size >= UInt64(SortedSegmentFormat.pageSize) else {
            throw FormatError(file: path, "truncated: \(size) bytes is shorter than a segment header")
        }
        header = try SortedSegmentFormat.Header.decode(try file.readBytes(count: SortedSegmentFormat.pageSize, at: 0), fileSize: size, file: path)
        let meta = try file.readBytes(count: header.metaLength, at: header.packsOffset)
        guard meta.count == header.metaLength else { throw FormatError(file: path, "ends early (truncated while read)") }
        var hasher = StreamingDigest()
        hasher.update(header.fixedFields())
        hasher.update(meta)
        guard hasher.finish() == header.metaChecksum else {
            throw FormatError(file: path, "header checksum mismatch (damaged)")
        }
        var r = ByteReader(meta, file: path)
        packs = try (0..<header.packCount).map { _ in PackID(bytes: try r.readBytes(16))! }
        // The fanout is read in place (a generic reader per value cost 9 ms for 2^16 values).
        let fanoutStart = header.packCount * 16, count = header.fanoutCount
        let fanout = meta.withUnsafeBytes { raw in
            (0..<count).map { UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: fanoutStart + $0 * 4, as: UInt32.self)) }
        }
        var previous: UInt32 = 0
        for value in fanout {
            guard value >= previous else { throw FormatError(file: path, "fanout table is not ascending") }
            previous = value
        }
        guard UInt64(previous) == header.entryCount else {
            throw FormatError(file: path, "fanout table counts \(previous) entries, the header \(header.entryCount)")
        }
        self.fanout = fanout
        keepsBloom = header.bloomBlocks * UInt64(SortedSegmentFormat.bloomBlockSize) <= UInt64(residentBloomBytes)
    }

    public func mayContain(_ digest: ChunkDigest) throws -> Bool {
        guard header.entryCount > 0 else { return false }
        let block = SortedSegmentFormat.bloomBlock(digest, blocks: header.bloomBlocks)
        let blockSize = SortedSegmentFormat.bloomBlockSize
        if keepsBloom {
            // Read once; a damaged filter is reported at every probe without being read again
            // (an error reading it is not kept: the next probe tries again).
            let filter = try residentBloom.withLock { (resident: inout Result<[UInt8], any Error>?) -> Result<[UInt8], any Error> in
                if let resident { return resident }
                let read = Result { try readBloom() }
                if case .failure(let error) = read, !(error is FormatError) { return read }
                resident = read
                return read
            }.get()
            return filter.withUnsafeBytes { Self.probe(digest, UnsafeRawBufferPointer(rebasing: $0[Int(block) * blockSize..<(Int(block) + 1) * blockSize])) }
        }
        var words = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        let n = try withUnsafeMutableBytes(of: &words) {
            try file.read(into: $0, at: header.bloomOffset + block * UInt64(blockSize))
        }
        guard n == blockSize else { throw FormatError(file: path, "Bloom filter ends early (truncated)") }
        return withUnsafeBytes(of: &words) { Self.probe(digest, $0) }
    }

    /// Whether every bit `digest` sets in its 64-byte block is set.
    private static func probe(_ digest: ChunkDigest, _ block: UnsafeRawBufferPointer) -> Bool {
        for probe in 0..<SortedSegmentFormat.bloomProbes {
            let bit = SortedSegmentFormat.bloomBit(digest, probe: probe)
            let word = UInt64(littleEndian: block.loadUnaligned(fromByteOffset: (bit / 64) * 8, as: UInt64.self))
            if word & (1 << UInt64(bit % 64)) == 0 { return false }
        }
        return true
    }

    /// The whole Bloom filter of a small segment, checked against its checksum.
    private func readBloom() throws -> [UInt8] {
        let bytes = try file.readBytes(count: Int(header.bloomBlocks) * SortedSegmentFormat.bloomBlockSize, at: header.bloomOffset)
        guard bytes.count == Int(header.bloomBlocks) * SortedSegmentFormat.bloomBlockSize else { throw FormatError(file: path, "Bloom filter ends early (truncated)") }
        var hasher = StreamingDigest()
        hasher.update(bytes)
        guard hasher.finish() == header.bloomChecksum else { throw FormatError(file: path, "Bloom filter checksum mismatch (damaged)") }
        return bytes
    }

    /// Entries `[lo, hi)` of bucket `b`.
    private func bucketRange(_ b: Int) -> Range<UInt64> {
        (b == 0 ? 0 : UInt64(fanout[b - 1]))..<UInt64(fanout[b])
    }

    /// Reads pages `[first, first + count)` into `buffer` and verifies each.
    func readPages(_ first: UInt64, count: Int, into buffer: UnsafeMutableRawBufferPointer) throws {
        let bytes = count * SortedSegmentFormat.pageSize
        let target = UnsafeMutableRawBufferPointer(rebasing: buffer[..<bytes])
        let n = try file.read(into: target, at: header.pagesOffset + first * UInt64(SortedSegmentFormat.pageSize))
        guard n == bytes else { throw FormatError(file: path, "page \(first) ends early (truncated)") }
        for i in 0..<count {
            let page = UnsafeRawBufferPointer(rebasing: buffer[i * SortedSegmentFormat.pageSize..<(i + 1) * SortedSegmentFormat.pageSize])
            let stored = SortedSegmentFormat.digest(in: page, at: 0)
            guard SortedSegmentFormat.pageChecksum(page, index: first + UInt64(i)) == stored else {
                throw FormatError(file: path, "page \(first + UInt64(i)) checksum mismatch (damaged)")
            }
        }
    }

    public func copies(of digest: ChunkDigest) throws -> [ChunkIndexFormat.Entry] {
        let range = bucketRange(SortedSegmentFormat.bucket(digest, bits: header.fanoutBits))
        guard !range.isEmpty else { return [] }
        let perPage = UInt64(SortedSegmentFormat.entriesPerPage)
        let firstPage = range.lowerBound / perPage, lastPage = (range.upperBound - 1) / perPage
        let count = Int(lastPage - firstPage + 1)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count * SortedSegmentFormat.pageSize, alignment: 64)
        defer { buffer.deallocate() }
        try readPages(firstPage, count: count, into: buffer)
        let raw = UnsafeRawBufferPointer(buffer)
        func offset(_ i: UInt64) -> Int {
            Int(i / perPage - firstPage) * SortedSegmentFormat.pageSize + SortedSegmentFormat.slotOffset(Int(i % perPage))
        }
        // Lower bound of `digest` in the bucket.
        var lo = range.lowerBound, hi = range.upperBound
        while lo < hi {
            let mid = (lo + hi) / 2
            if SortedSegmentFormat.digest(in: raw, at: offset(mid)) < digest { lo = mid + 1 } else { hi = mid }
        }
        var found: [ChunkIndexFormat.Entry] = []
        var i = lo
        while i < range.upperBound, SortedSegmentFormat.digest(in: raw, at: offset(i)) == digest {
            found.append(try SortedSegmentFormat.entry(in: raw, at: offset(i), header: header, file: path))
            i += 1
        }
        return found
    }

    public func forEach(_ body: (ChunkIndexFormat.Entry) throws -> Void) throws {
        let entries = cursor()
        while let e = try entries.next() { try body(e) }
    }

    public func cursor() -> any SegmentCursor { SortedCursor(self) }

    /// Pulls entries a batch of pages at a time: every page verified, every entry checked for
    /// order and fanout bucket.
    final class SortedCursor: SegmentCursor {
        let segment: SortedSegment
        var batch: [ChunkIndexFormat.Entry] = []
        var position = 0
        var page: UInt64 = 0
        var index: UInt64 = 0
        var previous = ChunkDigest.zero
        var bucket = 0

        init(_ segment: SortedSegment) { self.segment = segment }

        func next() throws -> ChunkIndexFormat.Entry? {
            if position == batch.count {
                guard try refill() else { return nil }
            }
            position += 1
            return batch[position - 1]
        }

        private func refill() throws -> Bool {
            let header = segment.header
            guard page < header.pageCount else { return false }
            let count = Int(min(UInt64(SortedSegment.pagesPerRead), header.pageCount - page))
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count * SortedSegmentFormat.pageSize, alignment: 64)
            defer { buffer.deallocate() }
            try segment.readPages(page, count: count, into: buffer)
            batch.removeAll(keepingCapacity: true)
            position = 0
            let raw = UnsafeRawBufferPointer(buffer)
            for p in 0..<count {
                for slot in 0..<SortedSegmentFormat.entriesPerPage where index < header.entryCount {
                    let entry = try SortedSegmentFormat.entry(in: raw, at: p * SortedSegmentFormat.pageSize + SortedSegmentFormat.slotOffset(slot),
                                                              header: header, file: segment.path)
                    try segment.checkOrder(entry, index: index, previous: previous, bucket: &bucket)
                    previous = entry.digest
                    index += 1
                    batch.append(entry)
                }
            }
            page += UInt64(count)
            return true
        }
    }

    /// The invariants of entry `index`: not before its predecessor, in its fanout bucket.
    func checkOrder(_ entry: ChunkIndexFormat.Entry, index: UInt64, previous: ChunkDigest, bucket: inout Int) throws {
        guard index == 0 || !(entry.digest < previous) else {
            throw FormatError(file: path, "entry \(index) (\(entry.digest)) is out of order")
        }
        while UInt64(fanout[bucket]) <= index { bucket += 1 }
        guard SortedSegmentFormat.bucket(entry.digest, bits: header.fanoutBits) == bucket else {
            throw FormatError(file: path, "entry \(index) (\(entry.digest)) disagrees with the fanout table")
        }
    }

    /// Reads the whole Bloom filter and checks it against its checksum (`check`).
    public func verifyBloom() throws {
        var hasher = StreamingDigest()
        var done: UInt64 = 0
        let total = header.bloomBlocks * UInt64(SortedSegmentFormat.bloomBlockSize)
        while done < total {
            let piece = try file.readBytes(count: Int(min(1 << 20, total - done)), at: header.bloomOffset + done)
            guard !piece.isEmpty else { throw FormatError(file: path, "Bloom filter ends early (truncated)") }
            hasher.update(piece)
            done += UInt64(piece.count)
        }
        guard hasher.finish() == header.bloomChecksum else { throw FormatError(file: path, "Bloom filter checksum mismatch (damaged)") }
    }
}

/// A version 1 or 2 segment (unsorted, one checksum over the file): loaded whole and sorted in
/// memory. Compaction rewrites it as version 3 the first time a writer or gc runs.
public final class LegacySegment: IndexSegment {
    public let path: String
    public let packs: [PackID]
    private let entries: [ChunkIndexFormat.Entry]
    public let storedBytes: UInt64
    public let rawBytes: UInt64

    public convenience init(path: String) throws { try self.init(file: try OpenFile(path: path)) }

    init(file: any RandomAccessReading) throws {
        path = file.path
        let segment = try ChunkIndexFormat.decode(try file.readBytes(count: Int(try file.size()), at: 0), file: path)
        packs = segment.packs
        var stored: UInt64 = 0, raw: UInt64 = 0
        var lastBlock: (pack: UInt32, offset: UInt64)?
        for e in segment.entries {
            if lastBlock?.pack != e.pack || lastBlock?.offset != e.offset { stored += UInt64(e.storedLength) }
            lastBlock = (e.pack, e.offset)
            raw += UInt64(e.rawLength)
        }
        storedBytes = stored
        rawBytes = raw
        // Stable: of two copies of a digest, the first in the file stays first.
        entries = segment.entries.enumerated().sorted { ($0.element.digest, $0.offset) < ($1.element.digest, $1.offset) }.map(\.element)
    }

    public var entryCount: UInt64 { UInt64(entries.count) }
    public func mayContain(_ digest: ChunkDigest) throws -> Bool { !entries.isEmpty }

    public func copies(of digest: ChunkDigest) throws -> [ChunkIndexFormat.Entry] {
        var lo = 0, hi = entries.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if entries[mid].digest < digest { lo = mid + 1 } else { hi = mid }
        }
        var found: [ChunkIndexFormat.Entry] = []
        while lo < entries.count, entries[lo].digest == digest {
            found.append(entries[lo])
            lo += 1
        }
        return found
    }

    public func forEach(_ body: (ChunkIndexFormat.Entry) throws -> Void) throws {
        for e in entries { try body(e) }
    }

    public func cursor() -> any SegmentCursor { ArrayCursor(entries) }
}

/// Entries already sorted in memory, as a cursor.
public final class ArrayCursor: SegmentCursor {
    private let entries: [ChunkIndexFormat.Entry]
    private var position = 0
    public init(_ entries: [ChunkIndexFormat.Entry]) { self.entries = entries }
    public func next() throws -> ChunkIndexFormat.Entry? {
        guard position < entries.count else { return nil }
        position += 1
        return entries[position - 1]
    }
}

/// Writes a version 3 segment from entries given in digest order, streaming: one page, the
/// fanout counts and the Bloom filter (1.25 bytes per entry) are in memory. The entry count and
/// the totals are given up front; `finish` writes the header last and fsyncs. The caller
/// publishes the file (rename) and may read it back first.
public final class SortedSegmentWriter {
    public let path: String
    private let file: OpenFile
    private var header: SortedSegmentFormat.Header
    private var counts: [UInt32]
    private var bloom: [UInt64]
    private let page: UnsafeMutableRawBufferPointer
    private var pageIndex: UInt64 = 0
    private var slot = 0
    private var written: UInt64 = 0
    private var previous = ChunkDigest.zero
    private var stored: UInt64 = 0
    private var raw: UInt64 = 0
    private let packTable: [UInt8]
    private let sync: Bool

    /// Creates `path` (which must not exist) for `entryCount` entries naming `packs`.
    /// Without `sync` (a writer's temporary runs) the file is not fsynced.
    public init(path: String, packs: [PackID], entryCount: UInt64, sync: Bool = true) throws {
        self.sync = sync
        precondition(entryCount <= SortedSegmentFormat.maximumEntries && packs.count <= ChunkIndexFormat.maximumPacks)
        self.path = path
        file = try OpenFile(path: path, mode: [.writeOnly, .create, .exclusive], permissions: 0o600)
        header = SortedSegmentFormat.Header(packCount: packs.count, entryCount: entryCount, storedBytes: 0, rawBytes: 0)
        counts = [UInt32](repeating: 0, count: header.fanoutCount)
        bloom = [UInt64](repeating: 0, count: Int(header.bloomBlocks) * 8)
        page = .allocate(byteCount: SortedSegmentFormat.pageSize, alignment: 64)
        page.initializeMemory(as: UInt8.self, repeating: 0)
        var w = ByteWriter(capacity: packs.count * 16)
        for pack in packs { w.append(pack.bytes) }
        packTable = w.bytes
        try file.write(w.bytes, at: header.packsOffset)
    }

    deinit { page.deallocate() }

    public var count: UInt64 { written }

    /// Adds the next entry: its digest must not sort before the previous one's.
    public func append(_ entry: ChunkIndexFormat.Entry) throws {
        precondition(written < header.entryCount, "segment writer: more entries than the \(header.entryCount) announced")
        precondition(Int(entry.pack) < header.packCount)
        precondition(written == 0 || !(entry.digest < previous), "segment writer: entries out of digest order")
        SortedSegmentFormat.encode(entry, into: page, at: SortedSegmentFormat.slotOffset(slot))
        counts[SortedSegmentFormat.bucket(entry.digest, bits: header.fanoutBits)] += 1
        let block = Int(SortedSegmentFormat.bloomBlock(entry.digest, blocks: header.bloomBlocks))
        for probe in 0..<SortedSegmentFormat.bloomProbes {
            let bit = SortedSegmentFormat.bloomBit(entry.digest, probe: probe)
            bloom[block * 8 + bit / 64] |= 1 << UInt64(bit % 64)
        }
        if entry.blockOffset == 0 { stored += UInt64(entry.storedLength) }
        raw += UInt64(entry.rawLength)
        previous = entry.digest
        written += 1
        slot += 1
        if slot == SortedSegmentFormat.entriesPerPage { try writePage() }
    }

    private func writePage() throws {
        let checksum = SortedSegmentFormat.pageChecksum(UnsafeRawBufferPointer(page), index: pageIndex)
        checksum.withBytes { UnsafeMutableRawBufferPointer(rebasing: page[0..<32]).copyMemory(from: $0) }
        try file.write(UnsafeRawBufferPointer(page), at: header.pagesOffset + pageIndex * UInt64(SortedSegmentFormat.pageSize))
        page.initializeMemory(as: UInt8.self, repeating: 0)
        pageIndex += 1
        slot = 0
    }

    /// Writes the last page, the fanout, the Bloom filter and the header; fsyncs.
    public func finish() throws {
        precondition(written == header.entryCount, "segment writer: \(written) entries written, \(header.entryCount) announced")
        if slot > 0 { try writePage() }
        var w = ByteWriter(capacity: counts.count * 4)
        var total: UInt32 = 0
        for c in counts {
            total += c
            w.append(total)
        }
        try file.write(w.bytes, at: header.fanoutOffset)
        var bloomHasher = StreamingDigest()
        try bloom.withUnsafeBytes { bytes in
            // Little-endian on disk: the words are stored as the machine's (x86-64, arm64: LE).
            bloomHasher.update(bytes)
            try file.write(bytes, at: header.bloomOffset)
        }
        header.storedBytes = stored
        header.rawBytes = raw
        var meta = StreamingDigest()
        meta.update(header.fixedFields())
        meta.update(packTable)
        meta.update(w.bytes)
        header.metaChecksum = meta.finish()
        header.bloomChecksum = bloomHasher.finish()
        try file.write(header.encode(), at: 0)
        if sync { try file.sync() }
    }
}
