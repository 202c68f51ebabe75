import Foundation
import Crypto

/// The SHA-256 of a chunk's uncompressed bytes: its name in the store.
///
/// Stored as four words so that comparing and hashing it costs four loads. The all-zero
/// value is reserved: in a fixed index it means "this chunk is all zeroes" (a SHA-256 of
/// all-zero bits is not a digest any input is known to have).
public struct ChunkDigest: Hashable, Sendable, Comparable, CustomStringConvertible {
    public static let byteCount = 32
    public static let zero = ChunkDigest(words: (0, 0, 0, 0))

    private var w0, w1, w2, w3: UInt64

    init(words: (UInt64, UInt64, UInt64, UInt64)) {
        (w0, w1, w2, w3) = words
    }

    /// From 32 raw digest bytes.
    public init(bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == Self.byteCount)
        w0 = bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
        w1 = bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        w2 = bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
        w3 = bytes.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
    }

    /// SHA-256 of `data`.
    public init(hashing data: UnsafeRawBufferPointer) {
        let digest = SHA256.hash(data: data)
        self = digest.withUnsafeBytes { ChunkDigest(bytes: $0) }
    }

    public init?(hex: String) {
        let utf8 = Array(hex.utf8)
        guard utf8.count == 64 else { return nil }
        var raw = [UInt8](repeating: 0, count: 32)
        for i in 0..<32 {
            guard let hi = hexValue(utf8[2 * i]), let lo = hexValue(utf8[2 * i + 1]) else { return nil }
            raw[i] = hi << 4 | lo
        }
        self = raw.withUnsafeBytes { ChunkDigest(bytes: $0) }
    }

    public var isZero: Bool { self == .zero }

    /// The first eight bytes as a word: already uniformly distributed, for sharding.
    public var leadingWord: UInt64 { w0 }
    /// Two more independent words, for hashing schemes that need several (Bloom filters).
    public var secondWord: UInt64 { w1 }
    public var thirdWord: UInt64 { w2 }

    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var words = (w0, w1, w2, w3)
        return try withUnsafeBytes(of: &words) { try body($0) }
    }

    public var hex: String {
        withBytes { bytes in
            let digits = Array("0123456789abcdef".utf8)
            var out = [UInt8]()
            out.reserveCapacity(64)
            for b in bytes {
                out.append(digits[Int(b >> 4)])
                out.append(digits[Int(b & 15)])
            }
            return String(decoding: out, as: UTF8.self)
        }
    }

    public var description: String { hex }

    /// Byte-wise order (as the hex strings sort).
    public static func < (a: ChunkDigest, b: ChunkDigest) -> Bool {
        (a.w0.byteSwapped, a.w1.byteSwapped, a.w2.byteSwapped, a.w3.byteSwapped)
            < (b.w0.byteSwapped, b.w1.byteSwapped, b.w2.byteSwapped, b.w3.byteSwapped)
    }
}

private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
    default: nil
    }
}

/// SHA-256 over a sequence of pieces, for file checksums.
public struct StreamingDigest {
    private var hasher = SHA256()
    public init() {}
    public mutating func update(_ bytes: UnsafeRawBufferPointer) { hasher.update(bufferPointer: bytes) }
    public mutating func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { hasher.update(bufferPointer: $0) } }
    public consuming func finish() -> ChunkDigest {
        hasher.finalize().withUnsafeBytes { ChunkDigest(bytes: $0) }
    }
}

/// How a repository names its chunks: SHA-256 of the bytes, or, in an encrypted repository,
/// HMAC-SHA-256 under its chunk-id key (docs/FORMAT.md, "Encryption"), so that the SHA-256
/// of a known block appears nowhere in it. Every place that names or verifies a chunk asks
/// the repository's identity, never SHA-256 directly.
public struct ChunkIdentity: Sendable {
    public static let sha256 = ChunkIdentity(template: nil, keyDigest: nil)

    /// HMAC with the key already absorbed: each chunk starts from a copy (copy-on-write).
    private let template: KeyedTemplate?
    /// SHA-256 of the key: tells two keyed identities apart without revealing either.
    public let keyDigest: ChunkDigest?

    private struct KeyedTemplate: @unchecked Sendable {  // never mutated: each use copies it
        let mac: HMAC<SHA256>
    }

    private init(template: KeyedTemplate?, keyDigest: ChunkDigest?) {
        self.template = template
        self.keyDigest = keyDigest
    }

    /// HMAC-SHA-256 under `key` (32 bytes).
    public init(key: [UInt8]) {
        template = KeyedTemplate(mac: HMAC<SHA256>(key: SymmetricKey(data: key)))
        keyDigest = key.withUnsafeBytes { ChunkDigest(hashing: $0) }
    }

    public var isKeyed: Bool { template != nil }

    public func digest(of data: UnsafeRawBufferPointer) -> ChunkDigest {
        guard let template else { return ChunkDigest(hashing: data) }
        var mac = template.mac
        mac.update(data: data)
        return mac.finalize().withUnsafeBytes { ChunkDigest(bytes: $0) }
    }

    /// The same names: both SHA-256, or both keyed with one key.
    public func namesLike(_ other: ChunkIdentity) -> Bool { keyDigest == other.keyDigest }
}
