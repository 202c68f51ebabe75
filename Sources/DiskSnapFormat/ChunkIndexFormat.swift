import DiskSnapSys

/// Chunk index segment, version 2 (docs/FORMAT.md, "Chunk index segment"): which pack and
/// block hold each chunk, for the packs one writer published. The union of all segments is
/// the chunk index; it can be rebuilt from the packs' tables of contents. Version 1 (56-byte
/// entries without a block offset: one chunk per block) is still read.
///
///     header   32 bytes        magic[8] version:u32 packCount:u32 entryCount:u64 reserved:u64
///     packs    packCount x 16  pack ids
///     entries  entryCount x 64 digest[32] pack:u32 storedLength:u32 offset:u64 rawLength:u32 encoding:u8 reserved[3]
///                              blockOffset:u32 reserved[4]
///     trailer  32 bytes        SHA-256 of everything before it
public enum ChunkIndexFormat {
    public static let magic: [UInt8] = [0x93, 0x92, 0xa9, 0x73, 0x9b, 0x08, 0xfe, 0x98]  // SHA-256("disksnap chunk index v1")[0..<8]
    public static let version: UInt32 = 2
    public static let headerSize = 32
    public static let entrySize = 64
    static func entrySize(version: UInt32) -> Int { version == 1 ? 56 : 64 }
    public static let trailerSize = 32
    /// Limits on one segment, checked when reading.
    public static let maximumPacks = 1 << 20
    public static let maximumEntries = 1 << 28

    public struct Entry: Sendable, Equatable {
        public var digest: ChunkDigest
        /// Position in the segment's pack table.
        public var pack: UInt32
        public var offset: UInt64
        public var storedLength: UInt32
        public var rawLength: UInt32
        public var encoding: ChunkEncoding
        /// Where the chunk starts in its decoded block (see `PackEntry`).
        public var blockOffset: UInt32

        public init(digest: ChunkDigest, pack: UInt32, offset: UInt64, storedLength: UInt32, rawLength: UInt32,
                    encoding: ChunkEncoding, blockOffset: UInt32 = 0) {
            self.digest = digest
            self.pack = pack
            self.offset = offset
            self.storedLength = storedLength
            self.rawLength = rawLength
            self.encoding = encoding
            self.blockOffset = blockOffset
        }
    }

    public struct Segment: Sendable, Equatable {
        public var packs: [PackID]
        public var entries: [Entry]
        public init(packs: [PackID], entries: [Entry]) {
            self.packs = packs
            self.entries = entries
        }
    }

    public static func encode(_ segment: Segment) -> [UInt8] {
        var w = ByteWriter(capacity: headerSize + segment.packs.count * 16 + segment.entries.count * entrySize + trailerSize)
        w.append(magic)
        w.append(version)
        w.append(UInt32(segment.packs.count))
        w.append(UInt64(segment.entries.count))
        w.append(UInt64(0))
        for pack in segment.packs { w.append(pack.bytes) }
        for e in segment.entries {
            precondition(Int(e.pack) < segment.packs.count)
            encodeEntry(e, into: &w)
        }
        let checksum = w.bytes.withUnsafeBytes { ChunkDigest(hashing: $0) }
        w.append(checksum)
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8], file: String) throws(FormatError) -> Segment {
        guard bytes.count >= headerSize + trailerSize else {
            throw FormatError(file: file, "truncated: \(bytes.count) bytes is shorter than an empty chunk index segment")
        }
        let body = bytes[..<(bytes.count - trailerSize)]
        var trailer = ByteReader(bytes[(bytes.count - trailerSize)...], file: file)
        let stored = try trailer.readDigest()
        guard body.withUnsafeBytes({ ChunkDigest(hashing: $0) }) == stored else {
            throw FormatError(file: file, "checksum mismatch (damaged or truncated)")
        }
        var r = ByteReader(body, file: file)
        let header = try decodeHeader(&r, bodyLength: body.count, file: file)
        var packs: [PackID] = []
        for _ in 0..<header.packCount { packs.append(PackID(bytes: try r.readBytes(16))!) }
        var entries: [Entry] = []
        entries.reserveCapacity(Int(header.entryCount))
        for _ in 0..<header.entryCount { entries.append(try decodeEntry(&r, header: header, file: file)) }
        return Segment(packs: packs, entries: entries)
    }

    struct Header {
        let version: UInt32
        let packCount: Int
        let entryCount: UInt64
        var stride: Int { ChunkIndexFormat.entrySize(version: version) }
    }

    /// The header, checked against the length of the body (everything before the trailer).
    static func decodeHeader(_ r: inout ByteReader, bodyLength: Int, file: String) throws(FormatError) -> Header {
        try r.expectMagic(magic, what: "disksnap chunk index segment")
        let v: UInt32 = try r.read()
        guard v == 1 || v == version else { throw FormatError(file: file, "chunk index version \(v) is not supported") }
        let packCount = Int(try r.read(UInt32.self))
        let entryCount: UInt64 = try r.read()
        try r.skip(8)
        let header = Header(version: v, packCount: packCount, entryCount: entryCount)
        guard packCount <= maximumPacks, entryCount <= UInt64(maximumEntries),
              bodyLength == headerSize + packCount * 16 + Int(entryCount) * header.stride
        else { throw FormatError(file: file, "header counts (\(packCount) packs, \(entryCount) entries) do not match its length") }
        return header
    }

    static func decodeEntry(_ r: inout ByteReader, header: Header, file: String) throws(FormatError) -> Entry {
        let digest = try r.readDigest()
        let pack: UInt32 = try r.read()
        let storedLength: UInt32 = try r.read()
        let offset: UInt64 = try r.read()
        let rawLength: UInt32 = try r.read()
        let encodingByte: UInt8 = try r.read()
        try r.skip(3)
        var blockOffset: UInt32 = 0
        if header.version >= 2 {
            blockOffset = try r.read()
            try r.skip(4)
        }
        guard Int(pack) < header.packCount, let encoding = ChunkEncoding(rawValue: encodingByte) else {
            throw FormatError(file: file, "entry for chunk \(digest) names pack \(pack) of \(header.packCount) or encoding \(encodingByte)")
        }
        guard PackFormat.chunkFitsBlock(blockOffset: blockOffset, rawLength: rawLength, storedLength: storedLength, encoding: encoding) else {
            throw FormatError(file: file, "entry for chunk \(digest) lies outside its block (\(blockOffset)+\(rawLength))")
        }
        return Entry(digest: digest, pack: pack, offset: offset, storedLength: storedLength, rawLength: rawLength,
                     encoding: encoding, blockOffset: blockOffset)
    }

    static func encodeEntry(_ e: Entry, into w: inout ByteWriter) {
        w.append(e.digest)
        w.append(e.pack)
        w.append(e.storedLength)
        w.append(e.offset)
        w.append(e.rawLength)
        w.append(e.encoding.rawValue)
        w.appendZeros(3)
        w.append(e.blockOffset)
        w.appendZeros(4)
    }
}
