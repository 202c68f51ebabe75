/// Fixed index, version 1 (docs/FORMAT.md, "Fixed index"): one 32-byte digest per chunk
/// of the disk, in disk order, behind a 4096-byte header. The all-zero digest marks a chunk
/// that is all zeroes (never stored).
///
///     0     magic[8]
///     8     version:u32
///     12    headerSize:u32          = 4096
///     16    diskSize:u64            bytes
///     24    chunkSize:u32           bytes
///     28    reserved:u32
///     32    chunkCount:u64          = ceil(diskSize / chunkSize)
///     40    createdUnixSeconds:i64
///     48    entriesSHA256[32]       over the chunkCount x 32 entry bytes
///     80    snapshotId[32]          ASCII, zero-padded
///     112   zero padding
///     4064  headerSHA256[32]        over bytes 0..<4064
public struct FixedIndexHeader: Sendable, Equatable {
    public static let magic: [UInt8] = [0xed, 0x65, 0x1a, 0x42, 0xc6, 0x64, 0xa5, 0x80]  // SHA-256("disksnap fixed index v1")[0..<8]
    public static let version: UInt32 = 1
    public static let size = 4096
    public static let entrySize = 32
    static let checksumOffset = size - 32
    /// 16 EiB / 64 KiB: a limit that rejects absurd counts from damaged headers.
    public static let maximumChunkCount: UInt64 = 1 << 44

    public var diskSize: UInt64
    public var chunkSize: UInt32
    public var createdUnixSeconds: Int64
    public var entriesDigest: ChunkDigest
    public var snapshotID: String

    public init(diskSize: UInt64, chunkSize: UInt32, createdUnixSeconds: Int64, entriesDigest: ChunkDigest, snapshotID: String) {
        self.diskSize = diskSize
        self.chunkSize = chunkSize
        self.createdUnixSeconds = createdUnixSeconds
        self.entriesDigest = entriesDigest
        self.snapshotID = snapshotID
    }

    public var chunkCount: UInt64 { Self.chunkCount(diskSize: diskSize, chunkSize: chunkSize) }
    public var fileSize: UInt64 { UInt64(Self.size) + chunkCount * UInt64(Self.entrySize) }

    public static func chunkCount(diskSize: UInt64, chunkSize: UInt32) -> UInt64 {
        diskSize / UInt64(chunkSize) + (diskSize % UInt64(chunkSize) == 0 ? 0 : 1)  // no overflow near UInt64.max
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter(capacity: Self.size)
        w.append(Self.magic)
        w.append(Self.version)
        w.append(UInt32(Self.size))
        w.append(diskSize)
        w.append(chunkSize)
        w.append(UInt32(0))
        w.append(chunkCount)
        w.append(createdUnixSeconds)
        w.append(entriesDigest)
        let id = Array(snapshotID.utf8.prefix(32))
        w.append(id)
        w.appendZeros(32 - id.count)
        w.pad(to: Self.checksumOffset)
        w.append(w.bytes.withUnsafeBytes { ChunkDigest(hashing: $0) })
        precondition(w.count == Self.size)
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8], file: String) throws(FormatError) -> FixedIndexHeader {
        guard bytes.count >= size else { throw FormatError(file: file, "truncated: header is \(bytes.count) of \(size) bytes") }
        var r = ByteReader(bytes[..<size], file: file)
        try r.expectMagic(magic, what: "disksnap fixed index")
        let v: UInt32 = try r.read()
        guard v == version else { throw FormatError(file: file, "fixed index version \(v) is not supported") }
        let checksum = bytes[..<checksumOffset].withUnsafeBytes { ChunkDigest(hashing: $0) }
        let stored = bytes[checksumOffset..<size].withUnsafeBytes { ChunkDigest(bytes: $0) }
        guard checksum == stored else { throw FormatError(file: file, "header checksum mismatch") }
        let headerSize: UInt32 = try r.read()
        let diskSize: UInt64 = try r.read()
        let chunkSize: UInt32 = try r.read()
        try r.skip(4)
        let count: UInt64 = try r.read()
        let created: Int64 = try r.read()
        let entriesDigest = try r.readDigest()
        let idBytes = try r.readBytes(32)
        guard headerSize == UInt32(size), (try? ChunkSize(bytes: Int(chunkSize))) != nil,
              count == chunkCount(diskSize: diskSize, chunkSize: chunkSize), count <= maximumChunkCount
        else { throw FormatError(file: file, "inconsistent header (size \(diskSize), chunk \(chunkSize), count \(count))") }
        let id = String(decoding: idBytes.prefix(while: { $0 != 0 }), as: UTF8.self)
        return FixedIndexHeader(diskSize: diskSize, chunkSize: chunkSize, createdUnixSeconds: created, entriesDigest: entriesDigest, snapshotID: id)
    }
}
