/// Pack file, version 2 (docs/FORMAT.md, "Pack file"); version 1 is still read. Version 3 is
/// a sealed pack of an encrypted repository: each block and the table of contents sealed
/// (`Sealer`, 48 bytes more each), the trailer's checksum over the sealed table.
///
///     header   16 bytes   magic[8] version:u32 reserved:u32
///     blocks   ...        stored blocks back to back; a block holds one or more chunks
///     toc      n x 56     PackEntry each (one per chunk); sealed in version 3: n x 56 + 48
///     trailer  56 bytes   tocOffset:u64 entryCount:u32 version:u32 tocSHA256[32] magic[8]
///
/// The trailer ends with the magic, so a pack cut short anywhere is recognized as such.
public enum PackFormat {
    public static let magic: [UInt8] = [0x08, 0xc1, 0x77, 0x5d, 0xf5, 0xa1, 0xbd, 0xe6]  // SHA-256("disksnap pack v1")[0..<8]
    /// Written. Version 1 (one chunk per block, `blockOffset` always 0) is read too.
    public static let version: UInt32 = 2
    /// A sealed pack (encrypted repositories).
    public static let sealedVersion: UInt32 = 3
    public static let readableVersions: ClosedRange<UInt32> = 1...3
    /// What sealing adds to a block or a table of contents (`Sealer.overhead`).
    public static let sealedOverhead = 48
    public static let headerSize = 16
    public static let entrySize = 56
    public static let trailerSize = 56
    /// A pack is closed once its blobs reach this size.
    public static let targetSize = 32 << 20
    /// A writer closes a pack at this many chunks even below `targetSize` (very compressible
    /// data): the table of contents a reader loads stays under 2 MiB.
    public static let maximumEntriesPerPack = 1 << 15
    /// Packs larger than this are refused when read (a limit on everything).
    public static let maximumSize: UInt64 = 1 << 32
    /// The most raw bytes one block may hold: a reader's decompression buffer.
    public static let maximumBlockBytes = 16 << 20

    /// A chunk lies inside its block: inside the stored bytes of a raw block, inside the
    /// largest decoded block of a compressed one. For pack and index entries alike.
    public static func chunkFitsBlock(blockOffset: UInt32, rawLength: UInt32, storedLength: UInt32, encoding: ChunkEncoding) -> Bool {
        UInt64(blockOffset) + UInt64(rawLength) <= (encoding == .raw ? UInt64(storedLength) : UInt64(maximumBlockBytes))
    }

    public static func encodeHeader(sealed: Bool = false) -> [UInt8] {
        var w = ByteWriter(capacity: headerSize)
        w.append(magic)
        w.append(sealed ? sealedVersion : version)
        w.append(UInt32(0))
        return w.bytes
    }

    public static func decodeHeader(_ bytes: [UInt8], file: String) throws(FormatError) {
        var r = ByteReader(bytes, file: file)
        try r.expectMagic(magic, what: "disksnap pack")
        let v: UInt32 = try r.read()
        guard readableVersions.contains(v) else { throw FormatError(file: file, "pack version \(v) is not supported (this disksnap reads \(readableVersions))") }
    }

    public static func encodeTrailer(entries: [PackEntry], tocOffset: UInt64) -> (toc: [UInt8], trailer: [UInt8]) {
        let toc = encodeTOC(entries)
        return (toc, encodeTrailer(storedTOC: toc, entryCount: entries.count, tocOffset: tocOffset, sealed: false))
    }

    public static func encodeTOC(_ entries: [PackEntry]) -> [UInt8] {
        var toc = ByteWriter(capacity: entries.count * entrySize)
        for entry in entries { entry.encode(into: &toc) }
        return toc.bytes
    }

    /// The trailer after the table of contents as stored (sealed in a sealed pack).
    public static func encodeTrailer(storedTOC: [UInt8], entryCount: Int, tocOffset: UInt64, sealed: Bool) -> [UInt8] {
        var w = ByteWriter(capacity: trailerSize)
        w.append(tocOffset)
        w.append(UInt32(entryCount))
        w.append(sealed ? sealedVersion : version)
        w.append(storedTOC.withUnsafeBytes { ChunkDigest(hashing: $0) })
        w.append(magic)
        return w.bytes
    }

    public struct Trailer: Sendable {
        public let tocOffset: UInt64
        public let entryCount: Int
        public let tocDigest: ChunkDigest
        public let version: UInt32

        public var isSealed: Bool { version == PackFormat.sealedVersion }
        /// Bytes of the table of contents as stored.
        public var storedTOCBytes: Int { entryCount * PackFormat.entrySize + (isSealed ? PackFormat.sealedOverhead : 0) }
    }

    public static func decodeTrailer(_ bytes: [UInt8], fileSize: UInt64, file: String) throws(FormatError) -> Trailer {
        var r = ByteReader(bytes, file: file)
        let tocOffset: UInt64 = try r.read()
        let count: UInt32 = try r.read()
        let v: UInt32 = try r.read()
        let digest = try r.readDigest()
        try r.expectMagic(magic, what: "complete disksnap pack (trailer missing: truncated?)")
        guard readableVersions.contains(v) else { throw FormatError(file: file, "pack version \(v) is not supported") }
        // A damaged trailer may hold any numbers: the arithmetic must not overflow (found by
        // tools/fuzz: the overflow trapped instead of reporting the pack as damaged).
        let tocBytes = UInt64(count) * UInt64(entrySize) + (v == sealedVersion ? UInt64(sealedOverhead) : 0)
        let (tocEnd, overflow) = tocOffset.addingReportingOverflow(tocBytes)
        guard !overflow, tocOffset >= UInt64(headerSize), tocEnd <= UInt64.max - UInt64(trailerSize),
              tocEnd + UInt64(trailerSize) == fileSize else {
            throw FormatError(file: file, "table of contents at \(tocOffset) with \(count) entries does not fit a \(fileSize)-byte pack")
        }
        return Trailer(tocOffset: tocOffset, entryCount: Int(count), tocDigest: digest, version: v)
    }

    /// The entries of the table of contents `stored` (as read at `trailer.tocOffset`). A
    /// sealed pack's table is checked against the trailer, then opened with `open` (the
    /// repository's key); a sealed pack without a key, or an unsealed one where a key is
    /// given (an encrypted repository holds sealed packs only), is refused.
    public static func decodeTOC(_ stored: [UInt8], trailer: Trailer, file: String,
                                 open: (([UInt8]) throws -> [UInt8])? = nil) throws -> [PackEntry] {
        let digest = stored.withUnsafeBytes { ChunkDigest(hashing: $0) }
        guard digest == trailer.tocDigest else { throw FormatError(file: file, "table of contents checksum mismatch") }
        let bytes: [UInt8]
        switch (trailer.isSealed, open) {
        case (true, let open?): bytes = try open(stored)
        case (false, nil): bytes = stored
        case (true, nil): throw FormatError(file: file, "is a sealed pack (an encrypted repository's): this repository is not encrypted")
        case (false, _?): throw FormatError(file: file, "is not sealed, in an encrypted repository (planted, or from another repository)")
        }
        guard bytes.count == trailer.entryCount * entrySize else { throw FormatError(file: file, "table of contents is \(bytes.count) bytes, not \(trailer.entryCount) entries") }
        var r = ByteReader(bytes, file: file)
        var entries: [PackEntry] = []
        entries.reserveCapacity(trailer.entryCount)
        for _ in 0..<trailer.entryCount {
            let entry = try PackEntry.decode(from: &r)
            guard entry.offset >= UInt64(headerSize), entry.offset + UInt64(entry.storedLength) <= trailer.tocOffset else {
                throw FormatError(file: file, "chunk \(entry.digest) at \(entry.offset)+\(entry.storedLength) lies outside the block area")
            }
            guard trailer.version >= 2 || entry.blockOffset == 0 else {
                throw FormatError(file: file, "chunk \(entry.digest): a version 1 pack has a block offset")
            }
            try entry.validateBlock(file: file)
            entries.append(entry)
        }
        return entries
    }
}

/// One stored chunk in a pack's table of contents (56 bytes):
/// digest[32] offset:u64 storedLength:u32 rawLength:u32 encoding:u8 reserved[3] blockOffset:u32.
///
/// `offset`, `storedLength` and `encoding` describe the block that holds the chunk (several
/// chunks compressed together share one block); the chunk is the `rawLength` bytes at
/// `blockOffset` of the decoded block.
public struct PackEntry: Sendable, Equatable {
    public var digest: ChunkDigest
    public var offset: UInt64
    public var storedLength: UInt32
    public var rawLength: UInt32
    public var encoding: ChunkEncoding
    public var blockOffset: UInt32

    public init(digest: ChunkDigest, offset: UInt64, storedLength: UInt32, rawLength: UInt32, encoding: ChunkEncoding, blockOffset: UInt32 = 0) {
        self.digest = digest
        self.offset = offset
        self.storedLength = storedLength
        self.rawLength = rawLength
        self.encoding = encoding
        self.blockOffset = blockOffset
    }

    /// The chunk must lie inside its block (`PackFormat.chunkFitsBlock`).
    func validateBlock(file: String) throws(FormatError) {
        guard PackFormat.chunkFitsBlock(blockOffset: blockOffset, rawLength: rawLength, storedLength: storedLength, encoding: encoding) else {
            throw FormatError(file: file, "chunk \(digest) at \(blockOffset)+\(rawLength) of its block lies outside the block")
        }
    }

    func encode(into w: inout ByteWriter) {
        w.append(digest)
        w.append(offset)
        w.append(storedLength)
        w.append(rawLength)
        w.append(encoding.rawValue)
        w.appendZeros(3)
        w.append(blockOffset)
    }

    static func decode(from r: inout ByteReader) throws(FormatError) -> PackEntry {
        let digest = try r.readDigest()
        let offset: UInt64 = try r.read()
        let stored: UInt32 = try r.read()
        let raw: UInt32 = try r.read()
        let encodingByte: UInt8 = try r.read()
        try r.skip(3)
        let blockOffset: UInt32 = try r.read()
        guard let encoding = ChunkEncoding(rawValue: encodingByte) else {
            throw FormatError(file: r.file, "chunk \(digest) has unknown encoding \(encodingByte)")
        }
        guard raw > 0, raw <= UInt32(ChunkSize.maximumBytes), stored > 0 else {
            throw FormatError(file: r.file, "chunk \(digest) has impossible lengths \(stored)/\(raw)")
        }
        return PackEntry(digest: digest, offset: offset, storedLength: stored, rawLength: raw, encoding: encoding, blockOffset: blockOffset)
    }
}
