/// Random identifiers: a prefix and lowercase base32 (RFC 4648 alphabet, lowercased).
enum Base32 {
    static let alphabet = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)

    static func random(count: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        return String(decoding: (0..<count).map { _ in alphabet[Int(generator.next() % 32)] }, as: UTF8.self)
    }

    static func isValid(_ text: Substring, count: Int) -> Bool {
        text.utf8.count == count && text.utf8.allSatisfy { alphabet.contains($0) }
    }
}

/// What a prefixed id names: its prefix says so (`s-` snapshot, `d-` disk).
public protocol IDKind: Sendable {
    static var prefix: String { get }
    static var noun: String { get }
}
public enum SnapshotKind: IDKind {
    public static let prefix = "s-"
    public static let noun = "snapshot"
}
public enum DiskKind: IDKind {
    public static let prefix = "d-"
    public static let noun = "disk"
}

/// A prefix and 20 base32 characters (100 random bits).
public struct PrefixedID<Kind: IDKind>: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    static var randomCount: Int { 20 }
    public let rawValue: String

    public static func generate() -> PrefixedID { PrefixedID(unchecked: Kind.prefix + Base32.random(count: randomCount)) }

    private init(unchecked: String) { rawValue = unchecked }

    /// nil unless `text` has the form of such an id.
    public init?(_ text: String) {
        guard text.hasPrefix(Kind.prefix), Base32.isValid(text.dropFirst(Kind.prefix.count), count: Self.randomCount) else { return nil }
        rawValue = text
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let id = PrefixedID(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad \(Kind.noun) id \(text)"))
        }
        self = id
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }

    public var description: String { rawValue }
    public static func < (a: PrefixedID, b: PrefixedID) -> Bool { a.rawValue < b.rawValue }
}

public typealias SnapshotID = PrefixedID<SnapshotKind>
public typealias DiskID = PrefixedID<DiskKind>

/// A pack's name: 16 random bytes, written as 32 hex digits.
public struct PackID: Hashable, Sendable, CustomStringConvertible {
    public static let byteCount = 16
    public let bytes: [UInt8]

    public static func generate() -> PackID {
        var generator = SystemRandomNumberGenerator()
        return PackID(unchecked: (0..<byteCount).map { _ in UInt8.random(in: 0...255, using: &generator) })
    }

    private init(unchecked: [UInt8]) { bytes = unchecked }

    public init?(bytes: [UInt8]) {
        guard bytes.count == Self.byteCount else { return nil }
        self.bytes = bytes
    }

    public init?(hex: String) {
        let utf8 = Array(hex.utf8)
        guard utf8.count == 2 * Self.byteCount else { return nil }
        var raw: [UInt8] = []
        for i in stride(from: 0, to: utf8.count, by: 2) {
            guard let byte = UInt8(String(decoding: utf8[i...i + 1], as: UTF8.self), radix: 16),
                  utf8[i...i + 1].allSatisfy({ !(UInt8(ascii: "A")...UInt8(ascii: "F")).contains($0) })
            else { return nil }
            raw.append(byte)
        }
        bytes = raw
    }

    public var hex: String { bytes.map { String($0, radix: 16).leftPadded(to: 2) }.joined() }
    public var description: String { hex }
}

/// A random 128-bit id for a repository or a request, in UUID form.
public enum RandomUUID {
    public static func generate() -> String {
        var generator = SystemRandomNumberGenerator()
        var b = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        b[6] = b[6] & 0x0f | 0x40
        b[8] = b[8] & 0x3f | 0x80
        let hex = b.map { String($0, radix: 16).leftPadded(to: 2) }.joined()
        let parts = [hex.prefix(8), hex.dropFirst(8).prefix(4), hex.dropFirst(12).prefix(4), hex.dropFirst(16).prefix(4), hex.dropFirst(20)]
        return parts.joined(separator: "-")
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
