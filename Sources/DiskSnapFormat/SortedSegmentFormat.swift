/// Chunk index segment, version 3 (docs/FORMAT.md, "Chunk index segment, version 3"): the
/// entries sorted by digest in checksummed 4 KiB pages, a fanout table (as git's pack `.idx`)
/// that names the pages a digest can be on, a blocked Bloom filter that says "certainly
/// absent" without reading a page, and the totals in the header. A reader keeps the pack table
/// and the fanout (about 4 bytes per 63 entries) and reads one or two pages per lookup: memory
/// and start-up do not grow with the store.
///
///     page 0    header (128 bytes used, padded to 4096)
///     4096      packs    packCount x 16 pack ids
///               fanout   2^fanoutBits x u32: entries whose digest's leading fanoutBits bits are <= i
///     E         pages    pageCount x 4096: checksum[32] + 63 entries x 64 (version 2's entry) + 32 zero
///     B         bloom    bloomBlocks x 64 bytes
///
/// E and B are multiples of 4096. A page's checksum is SHA-256(pageIndex:u64 || page[32..<4096]);
/// the header's meta checksum covers header bytes 0..<64, the packs and the fanout; the Bloom
/// checksum covers the Bloom blocks (read whole only by `check`: a damaged Bloom filter can only
/// make a lookup miss, never make a chunk look stored).
public enum SortedSegmentFormat {
    public static let version: UInt32 = 3
    public static let pageSize = 4096
    public static let pageChecksumSize = 32
    public static let entriesPerPage = 63
    public static let entrySize = ChunkIndexFormat.entrySize
    public static let bloomBlockSize = 64
    /// Bloom bits per entry (about 1% false positives with 7 probes in a 512-bit block).
    public static let bloomBitsPerEntry = 10
    public static let bloomProbes = 7
    /// Limits, checked when reading.
    public static let maximumFanoutBits = 20
    public static let maximumEntries = UInt64(ChunkIndexFormat.maximumEntries)

    public struct Header: Sendable, Equatable {
        public var fanoutBits: Int
        public var packCount: Int
        public var entryCount: UInt64
        /// Compressed bytes of the blocks the entries lie in, each block once (summed over the
        /// entries that start a block: blockOffset 0).
        public var storedBytes: UInt64
        public var rawBytes: UInt64
        public var bloomBlocks: UInt64
        public var metaChecksum: ChunkDigest = .zero
        public var bloomChecksum: ChunkDigest = .zero

        public init(fanoutBits: Int, packCount: Int, entryCount: UInt64, storedBytes: UInt64, rawBytes: UInt64, bloomBlocks: UInt64) {
            self.fanoutBits = fanoutBits
            self.packCount = packCount
            self.entryCount = entryCount
            self.storedBytes = storedBytes
            self.rawBytes = rawBytes
            self.bloomBlocks = bloomBlocks
        }

        /// The layout that `entryCount` entries of `packCount` packs get.
        public init(packCount: Int, entryCount: UInt64, storedBytes: UInt64, rawBytes: UInt64) {
            self.init(fanoutBits: SortedSegmentFormat.fanoutBits(entryCount: entryCount), packCount: packCount,
                      entryCount: entryCount, storedBytes: storedBytes, rawBytes: rawBytes,
                      bloomBlocks: SortedSegmentFormat.bloomBlocks(entryCount: entryCount))
        }

        public var fanoutCount: Int { 1 << fanoutBits }
        public var pageCount: UInt64 { (entryCount + UInt64(entriesPerPage) - 1) / UInt64(entriesPerPage) }
        public var packsOffset: UInt64 { UInt64(pageSize) }
        public var fanoutOffset: UInt64 { packsOffset + UInt64(packCount * 16) }
        public var metaLength: Int { packCount * 16 + fanoutCount * 4 }
        public var pagesOffset: UInt64 { SortedSegmentFormat.aligned(fanoutOffset + UInt64(fanoutCount * 4)) }
        public var bloomOffset: UInt64 { pagesOffset + pageCount * UInt64(pageSize) }
        public var fileSize: UInt64 { bloomOffset + bloomBlocks * UInt64(bloomBlockSize) }

        /// The first 64 bytes (covered by the meta checksum) and the two checksums, padded to a page.
        public func encode() -> [UInt8] {
            var w = ByteWriter(capacity: pageSize)
            w.append(fixedFields())
            w.append(metaChecksum)
            w.append(bloomChecksum)
            w.pad(to: pageSize)
            return w.bytes
        }

        public func fixedFields() -> [UInt8] {
            var w = ByteWriter(capacity: 64)
            w.append(ChunkIndexFormat.magic)
            w.append(version)
            w.append(UInt32(fanoutBits))
            w.append(UInt32(packCount))
            w.append(UInt32(0))
            w.append(entryCount)
            w.append(storedBytes)
            w.append(rawBytes)
            w.append(bloomBlocks)
            w.append(UInt64(0))
            precondition(w.count == 64)
            return w.bytes
        }

        /// Decodes and checks the header page against the file's size. The meta checksum is
        /// checked by the caller once it has read the packs and fanout.
        public static func decode(_ page: [UInt8], fileSize: UInt64, file: String) throws(FormatError) -> Header {
            var r = ByteReader(page, file: file)
            try r.expectMagic(ChunkIndexFormat.magic, what: "disksnap chunk index segment")
            let v: UInt32 = try r.read()
            guard v == version else { throw FormatError(file: file, "chunk index version \(v) is not a sorted (version 3) segment") }
            let bits = Int(try r.read(UInt32.self))
            let packs = Int(try r.read(UInt32.self))
            try r.skip(4)
            let entries: UInt64 = try r.read()
            let stored: UInt64 = try r.read()
            let raw: UInt64 = try r.read()
            let blocks: UInt64 = try r.read()
            try r.skip(8)
            guard bits <= maximumFanoutBits, packs <= ChunkIndexFormat.maximumPacks, entries <= maximumEntries,
                  blocks == SortedSegmentFormat.bloomBlocks(entryCount: entries)
            else { throw FormatError(file: file, "header limits exceeded (\(bits) fanout bits, \(packs) packs, \(entries) entries, \(blocks) Bloom blocks)") }
            var header = Header(fanoutBits: bits, packCount: packs, entryCount: entries, storedBytes: stored, rawBytes: raw, bloomBlocks: blocks)
            header.metaChecksum = try r.readDigest()
            header.bloomChecksum = try r.readDigest()
            guard header.fileSize == fileSize else {
                throw FormatError(file: file, "is \(fileSize) bytes; its header (\(entries) entries, \(packs) packs) needs \(header.fileSize) (truncated?)")
            }
            return header
        }

    }

    public static func aligned(_ offset: UInt64) -> UInt64 { (offset + UInt64(pageSize) - 1) / UInt64(pageSize) * UInt64(pageSize) }

    /// About one page of entries per fanout bucket.
    public static func fanoutBits(entryCount: UInt64) -> Int {
        let pages = (entryCount + UInt64(entriesPerPage) - 1) / UInt64(entriesPerPage)
        guard pages > 1 else { return 0 }
        return min(maximumFanoutBits, 63 - pages.leadingZeroBitCount)
    }

    public static func bloomBlocks(entryCount: UInt64) -> UInt64 {
        max(1, (entryCount * UInt64(bloomBitsPerEntry) + 511) / 512)
    }

    /// The fanout bucket of `digest`: its leading `bits` bits.
    @inline(__always)
    public static func bucket(_ digest: ChunkDigest, bits: Int) -> Int {
        bits == 0 ? 0 : Int(digest.leadingWord.byteSwapped >> UInt64(64 - bits))
    }

    /// The Bloom block of `digest` and its probe bits in that block (7 positions of 9 bits).
    @inline(__always)
    public static func bloomBlock(_ digest: ChunkDigest, blocks: UInt64) -> UInt64 { digest.secondWord % blocks }

    @inline(__always)
    public static func bloomBit(_ digest: ChunkDigest, probe: Int) -> Int { Int((digest.thirdWord >> UInt64(9 * probe)) & 511) }

    /// The checksum of a page: its index and its bytes after the checksum.
    public static func pageChecksum(_ page: UnsafeRawBufferPointer, index: UInt64) -> ChunkDigest {
        var hasher = StreamingDigest()
        var le = index.littleEndian
        withUnsafeBytes(of: &le) { hasher.update($0) }
        hasher.update(UnsafeRawBufferPointer(rebasing: page[pageChecksumSize..<pageSize]))
        return hasher.finish()
    }

    /// Byte offset of entry `slot` (0..<63) inside its page.
    @inline(__always)
    public static func slotOffset(_ slot: Int) -> Int { pageChecksumSize + slot * entrySize }

    /// The digest of the entry at `offset` in `page`.
    @inline(__always)
    public static func digest(in page: UnsafeRawBufferPointer, at offset: Int) -> ChunkDigest {
        ChunkDigest(bytes: UnsafeRawBufferPointer(rebasing: page[offset..<offset + ChunkDigest.byteCount]))
    }

    /// Decodes the entry at `offset` of a verified page (the layout of `ChunkIndexFormat`'s
    /// version 2 entry, read in place) with the same checks.
    public static func entry(in page: UnsafeRawBufferPointer, at offset: Int, header: Header, file: String) throws(FormatError) -> ChunkIndexFormat.Entry {
        let digest = self.digest(in: page, at: offset)
        func load<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T { T(littleEndian: page.loadUnaligned(fromByteOffset: offset + at, as: T.self)) }
        let pack = load(32, UInt32.self), storedLength = load(36, UInt32.self), position = load(40, UInt64.self)
        let rawLength = load(48, UInt32.self), encodingByte = load(52, UInt8.self), blockOffset = load(56, UInt32.self)
        guard Int(pack) < header.packCount, let encoding = ChunkEncoding(rawValue: encodingByte) else {
            throw FormatError(file: file, "entry for chunk \(digest) names pack \(pack) of \(header.packCount) or encoding \(encodingByte)")
        }
        guard PackFormat.chunkFitsBlock(blockOffset: blockOffset, rawLength: rawLength, storedLength: storedLength, encoding: encoding) else {
            throw FormatError(file: file, "entry for chunk \(digest) lies outside its block (\(blockOffset)+\(rawLength))")
        }
        return ChunkIndexFormat.Entry(digest: digest, pack: pack, offset: position, storedLength: storedLength, rawLength: rawLength,
                                      encoding: encoding, blockOffset: blockOffset)
    }

    /// Encodes one entry into `page` at `offset`.
    public static func encode(_ entry: ChunkIndexFormat.Entry, into page: UnsafeMutableRawBufferPointer, at offset: Int) {
        var w = ByteWriter(capacity: entrySize)
        ChunkIndexFormat.encodeEntry(entry, into: &w)
        UnsafeMutableRawBufferPointer(rebasing: page[offset..<offset + entrySize]).copyBytes(from: w.bytes)
    }
}
