/// Little-endian encoding by hand: every on-disk binary structure goes through these two.
public struct ByteWriter {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func append<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    public mutating func append(_ raw: some Sequence<UInt8>) { bytes.append(contentsOf: raw) }

    public mutating func append(_ digest: ChunkDigest) { digest.withBytes { bytes.append(contentsOf: $0) } }

    public mutating func appendZeros(_ count: Int) { bytes.append(contentsOf: repeatElement(0, count: count)) }

    /// Pads with zeros up to `size` bytes in all.
    public mutating func pad(to size: Int) {
        precondition(bytes.count <= size, "structure is \(bytes.count) bytes, larger than its \(size)")
        appendZeros(size - bytes.count)
    }

    public var count: Int { bytes.count }
}

/// Bounds-checked little-endian decoding; every overrun is a `FormatError` naming the file.
public struct ByteReader {
    private let bytes: ArraySlice<UInt8>
    public private(set) var position: Int
    public let file: String

    public init(_ bytes: ArraySlice<UInt8>, file: String) {
        self.bytes = bytes
        self.position = bytes.startIndex
        self.file = file
    }

    public init(_ bytes: [UInt8], file: String) { self.init(bytes[...], file: file) }

    public var remaining: Int { bytes.endIndex - position }

    private mutating func take(_ count: Int) throws(FormatError) -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else {
            throw FormatError(file: file, "truncated: needs \(count) bytes at offset \(position - bytes.startIndex), has \(remaining)")
        }
        defer { position += count }
        return bytes[position..<position + count]
    }

    public mutating func read<T: FixedWidthInteger>(_: T.Type = T.self) throws(FormatError) -> T {
        let slice = try take(MemoryLayout<T>.size)
        var value: T = 0
        withUnsafeMutableBytes(of: &value) { $0.copyBytes(from: slice) }
        return T(littleEndian: value)
    }

    public mutating func readBytes(_ count: Int) throws(FormatError) -> [UInt8] { Array(try take(count)) }

    public mutating func readDigest() throws(FormatError) -> ChunkDigest {
        let slice = try take(ChunkDigest.byteCount)
        return slice.withUnsafeBytes { ChunkDigest(bytes: $0) }
    }

    public mutating func skip(_ count: Int) throws(FormatError) { _ = try take(count) }

    public mutating func expectMagic(_ magic: [UInt8], what: String) throws(FormatError) {
        let found = try readBytes(magic.count)
        guard found == magic else { throw FormatError(file: file, "not a \(what) (bad magic)") }
    }
}
