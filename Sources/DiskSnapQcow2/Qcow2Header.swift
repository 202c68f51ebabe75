import DiskSnapSys

/// A qcow2 image's header (QEMU docs/interop/qcow2.txt), decoded by hand and checked
/// before any field is used: every offset and size is bounded by the file and the format.
public struct Qcow2Header: Sendable, Equatable {
    public static let magic: UInt32 = 0x5146_49fb  // "QFI\xfb"
    public static let maximumClusterBits: UInt32 = 21  // 2 MiB
    public static let minimumClusterBits: UInt32 = 9  // 512 B
    /// QEMU's own limit on an L1 table (32 MiB).
    public static let maximumL1Bytes: UInt64 = 32 << 20

    public var version: UInt32
    public var backingFileOffset: UInt64
    public var backingFileSize: UInt32
    public var clusterBits: UInt32
    public var virtualSize: UInt64
    public var cryptMethod: UInt32
    public var l1Size: UInt32
    public var l1TableOffset: UInt64
    public var refcountTableOffset: UInt64
    public var refcountTableClusters: UInt32
    public var snapshotCount: UInt32
    public var snapshotsOffset: UInt64
    public var incompatibleFeatures: UInt64 = 0
    public var compatibleFeatures: UInt64 = 0
    public var autoclearFeatures: UInt64 = 0
    public var refcountOrder: UInt32 = 4
    public var headerLength: UInt32 = 72
    /// 0 deflate, 1 zstd (byte 104 of a v3 header longer than 104 bytes).
    public var compressionType: UInt8 = 0

    public var clusterSize: UInt64 { 1 << UInt64(clusterBits) }

    /// Incompatible feature bits.
    public static let dirtyBit: UInt64 = 1 << 0
    public static let corruptBit: UInt64 = 1 << 1
    public static let externalDataFileBit: UInt64 = 1 << 2
    public static let compressionTypeBit: UInt64 = 1 << 3
    public static let extendedL2Bit: UInt64 = 1 << 4
    static let incompatibleNames: [UInt64: String] = [
        dirtyBit: "dirty", corruptBit: "corrupt", externalDataFileBit: "external data file",
        compressionTypeBit: "compression type", extendedL2Bit: "extended L2 entries",
    ]

    static func name(ofIncompatibleBit bit: Int) -> String {
        incompatibleNames[1 << UInt64(bit)] ?? "unknown incompatible feature bit \(bit)"
    }

    /// Decodes the first bytes of a file (at least 72; 112 are enough for every field read
    /// here). `fileSize` bounds the offsets.
    public static func decode(_ bytes: [UInt8], fileSize: UInt64, file: String) throws(Qcow2Error) -> Qcow2Header {
        var r = BigEndianReader(bytes: bytes, file: file)
        guard try r.u32() == magic else { throw Qcow2Error.notQcow2(file) }
        let version = try r.u32()
        guard version == 2 || version == 3 else { throw Qcow2Error.unsupported(file, "qcow2 version \(version)") }
        var h = Qcow2Header(version: version, backingFileOffset: try r.u64(), backingFileSize: try r.u32(), clusterBits: try r.u32(),
                            virtualSize: try r.u64(), cryptMethod: try r.u32(), l1Size: try r.u32(), l1TableOffset: try r.u64(),
                            refcountTableOffset: try r.u64(), refcountTableClusters: try r.u32(), snapshotCount: try r.u32(),
                            snapshotsOffset: try r.u64())
        if version == 3 {
            h.incompatibleFeatures = try r.u64()
            h.compatibleFeatures = try r.u64()
            h.autoclearFeatures = try r.u64()
            h.refcountOrder = try r.u32()
            h.headerLength = try r.u32()
            guard h.headerLength >= 104, UInt64(h.headerLength) <= fileSize else {
                throw Qcow2Error.corrupt(file, "header length \(h.headerLength)")
            }
            if h.headerLength > 104 {
                h.compressionType = try r.u8()
            }
        }
        guard (minimumClusterBits...maximumClusterBits).contains(h.clusterBits) else {
            throw Qcow2Error.unsupported(file, "cluster size 2^\(h.clusterBits) (512 B to 2 MiB are read)")
        }
        guard h.cryptMethod == 0 else { throw Qcow2Error.unsupported(file, "encryption (crypt_method \(h.cryptMethod))") }
        // Every bit this reader does not handle is refused by name; "dirty" is the caller's
        // decision (a live image), "compression type" is read below.
        let handled = dirtyBit | compressionTypeBit
        let unknown = h.incompatibleFeatures & ~handled
        if unknown != 0 {
            let bit = unknown.trailingZeroBitCount
            throw Qcow2Error.unsupported(file, "incompatible feature bit \(bit) (\(name(ofIncompatibleBit: bit)))")
        }
        guard h.compressionType <= 1 else { throw Qcow2Error.unsupported(file, "compression type \(h.compressionType)") }
        guard h.compressionType == 0 || h.incompatibleFeatures & compressionTypeBit != 0 else {
            throw Qcow2Error.corrupt(file, "compression type \(h.compressionType) without its feature bit")
        }
        // The L1 table must cover the virtual disk and lie inside the file.
        let entriesPerL2 = h.clusterSize / 8
        let clusters = h.virtualSize / h.clusterSize + (h.virtualSize % h.clusterSize == 0 ? 0 : 1)
        let needed = clusters / entriesPerL2 + (clusters % entriesPerL2 == 0 ? 0 : 1)
        guard UInt64(h.l1Size) >= needed, UInt64(h.l1Size) * 8 <= maximumL1Bytes else {
            throw Qcow2Error.corrupt(file, "L1 table of \(h.l1Size) entries for a \(h.virtualSize)-byte disk")
        }
        guard h.l1TableOffset % h.clusterSize == 0, h.l1TableOffset <= fileSize, UInt64(h.l1Size) * 8 <= fileSize - h.l1TableOffset else {
            throw Qcow2Error.corrupt(file, "L1 table at \(h.l1TableOffset) outside the \(fileSize)-byte file")
        }
        if h.backingFileOffset != 0 {
            guard h.backingFileSize > 0, h.backingFileSize <= 1023, h.backingFileOffset <= fileSize,
                  UInt64(h.backingFileSize) <= fileSize - h.backingFileOffset else {
                throw Qcow2Error.corrupt(file, "backing file name at \(h.backingFileOffset) (\(h.backingFileSize) bytes)")
            }
        }
        return h
    }
}

/// Header extensions (after the header, up to the first cluster's end): what a reader needs.
public struct Qcow2Extensions: Sendable, Equatable {
    /// "raw" or "qcow2" when the image names its backing file's format.
    public var backingFormat: String?
    public var externalDataFile: String?

    static let endType: UInt32 = 0
    static let backingFormatType: UInt32 = 0xe279_2aca
    static let externalDataFileType: UInt32 = 0x4441_5441

    /// `bytes` is the first cluster of the file; extensions start at `start`.
    static func decode(_ bytes: [UInt8], start: Int, file: String) throws(Qcow2Error) -> Qcow2Extensions {
        var result = Qcow2Extensions()
        var r = BigEndianReader(bytes: bytes, file: file)
        r.position = start
        while r.remaining >= 8 {
            let type = try r.u32()
            let length = Int(try r.u32())
            if type == endType { return result }
            guard length <= r.remaining else { throw Qcow2Error.corrupt(file, "header extension 0x\(String(type, radix: 16)) of \(length) bytes passes the first cluster") }
            let data = try r.bytes(length)
            switch type {
            case backingFormatType: result.backingFormat = String(decoding: data, as: UTF8.self)
            case externalDataFileType: result.externalDataFile = String(decoding: data, as: UTF8.self)
            default: break
            }
            try r.skip((8 - length % 8) % 8)  // padded to 8 bytes
        }
        return result
    }
}

/// Big-endian fields, bounds-checked.
struct BigEndianReader {
    let bytes: [UInt8]
    let file: String
    var position = 0

    init(bytes: [UInt8], file: String) {
        self.bytes = bytes
        self.file = file
    }

    var remaining: Int { bytes.count - position }

    mutating func take(_ n: Int) throws(Qcow2Error) -> ArraySlice<UInt8> {
        guard n >= 0, n <= remaining else { throw Qcow2Error.corrupt(file, "header ends after \(bytes.count) bytes") }
        defer { position += n }
        return bytes[position..<position + n]
    }

    mutating func u8() throws(Qcow2Error) -> UInt8 { try take(1).first! }
    mutating func u32() throws(Qcow2Error) -> UInt32 { try take(4).reduce(0) { $0 << 8 | UInt32($1) } }
    mutating func u64() throws(Qcow2Error) -> UInt64 { try take(8).reduce(0) { $0 << 8 | UInt64($1) } }
    mutating func bytes(_ n: Int) throws(Qcow2Error) -> [UInt8] { Array(try take(n)) }
    mutating func skip(_ n: Int) throws(Qcow2Error) { _ = try take(min(n, remaining)) }
}

/// What is wrong with a qcow2 image, naming the file.
public struct Qcow2Error: CodedError {
    public let code: String
    public let message: String
    public let exitStatus: ExitStatus

    static func notQcow2(_ file: String) -> Qcow2Error {
        Qcow2Error(code: "InvalidDiskId.ValueNotSupported", message: "\(file) is not a qcow2 image (no QFI\\xfb magic)", exitStatus: .invalidParameter)
    }
    static func unsupported(_ file: String, _ what: String) -> Qcow2Error {
        Qcow2Error(code: "InvalidDiskId.ValueNotSupported", message: "\(file): \(what) is not supported", exitStatus: .invalidParameter)
    }
    static func corrupt(_ file: String, _ what: String) -> Qcow2Error {
        Qcow2Error(code: "Source.Corrupt", message: "\(file) is a damaged qcow2 image: \(what)", exitStatus: .corrupt)
    }
    static func live(_ file: String, _ why: String) -> Qcow2Error {
        Qcow2Error(code: "Source.InUse", message: "\(file) \(why); a snapshot of it would not be one point in time (stop the VM or pass --allow-live)", exitStatus: .conflict)
    }
}
