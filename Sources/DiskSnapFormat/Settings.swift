/// The repository's chunk size: a power of two from 16 KiB to 16 MiB.
public struct ChunkSize: Sendable, Equatable, Codable, CustomStringConvertible {
    public static let minimumBytes = 16 << 10
    public static let maximumBytes = 16 << 20
    /// Chosen by measurement: docs/DESIGN.md, "Choosing the chunk size".
    public static let `default` = ChunkSize(uncheckedBytes: 32 << 10)

    public let bytes: Int

    private init(uncheckedBytes: Int) { bytes = uncheckedBytes }

    public init(bytes: Int) throws(ParameterError) {
        guard bytes >= Self.minimumBytes, bytes <= Self.maximumBytes, bytes & (bytes - 1) == 0 else {
            throw ParameterError(code: "InvalidParameter.ChunkSize",
                                 "chunk size \(bytes) bytes is not a power of two from 16 KiB to 16 MiB")
        }
        self.bytes = bytes
    }

    /// Parses `65536`, `64K`, `64KiB`, `1M`, `1MiB` (binary units).
    public init(parsing text: String) throws(ParameterError) {
        let upper = text.uppercased()
        let units: [(String, Int)] = [("KIB", 1 << 10), ("MIB", 1 << 20), ("K", 1 << 10), ("M", 1 << 20), ("B", 1)]
        var number = upper, multiplier = 1
        for (suffix, factor) in units where upper.hasSuffix(suffix) {
            number = String(upper.dropLast(suffix.count))
            multiplier = factor
            break
        }
        guard let value = Int(number), value > 0, value <= Self.maximumBytes / multiplier else {
            throw ParameterError(code: "InvalidParameter.ChunkSize", "chunk size '\(text)' is not a size such as 64K, 256K or 4M")
        }
        try self.init(bytes: value * multiplier)
    }

    public init(from decoder: Decoder) throws {
        try self.init(bytes: try decoder.singleValueContainer().decode(Int.self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(bytes)
    }

    public var description: String {
        bytes >= 1 << 20 ? "\(bytes >> 20) MiB" : "\(bytes >> 10) KiB"
    }
}

/// How chunks are compressed: `zstd:LEVEL` (1-19) or `none`.
public enum Compression: Sendable, Equatable, Codable, CustomStringConvertible {
    case none
    case zstd(level: Int32)

    public static let `default` = Compression.zstd(level: 3)
    public static let zstdLevels: ClosedRange<Int32> = 1...19

    public init(parsing text: String) throws(ParameterError) {
        if text == "none" {
            self = .none
            return
        }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0] == "zstd", let level = Int32(parts[1]), Self.zstdLevels.contains(level) else {
            throw ParameterError(code: "InvalidParameter.Compression",
                                 "compression '\(text)' is not 'none' or 'zstd:LEVEL' with LEVEL from 1 to 19")
        }
        self = .zstd(level: level)
    }

    public var description: String {
        switch self {
        case .none: "none"
        case .zstd(let level): "zstd:\(level)"
        }
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        self = try Compression(parsing: text)
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// How one stored chunk is encoded in its pack (a byte in pack and index entries).
public enum ChunkEncoding: UInt8, Sendable {
    /// The chunk's bytes as they are (compression did not shrink them, or is off).
    case raw = 0
    /// One zstd frame.
    case zstd = 1
}
