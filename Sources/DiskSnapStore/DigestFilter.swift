import DiskSnapFormat

/// A Bloom filter of chunk digests: "maybe present" or "certainly absent", in about 10 bits
/// per digest (1% false positives with 7 probes). Garbage collection marks live chunks in
/// one, so its memory stays a few MiB per million chunks; a false positive only keeps a dead
/// chunk one more round, never drops a live one.
public struct DigestFilter: Sendable {
    private var bits: [UInt64]
    private let bitCount: UInt64
    static let probes = 7

    /// Sized for `expected` digests.
    public init(expected: Int) {
        let words = max(1, (max(expected, 1) * 10 + 63) / 64)
        bits = [UInt64](repeating: 0, count: words)
        bitCount = UInt64(words * 64)
    }

    public var byteCount: Int { bits.count * 8 }

    /// Digests are uniform already: two words of the digest give the probe sequence.
    private func positions(_ digest: ChunkDigest) -> [UInt64] {
        let a = digest.secondWord, b = digest.thirdWord | 1
        return (0..<UInt64(Self.probes)).map { (a &+ $0 &* b) % bitCount }
    }

    public mutating func insert(_ digest: ChunkDigest) {
        for p in positions(digest) { bits[Int(p / 64)] |= 1 << (p % 64) }
    }

    public func mayContain(_ digest: ChunkDigest) -> Bool {
        positions(digest).allSatisfy { bits[Int($0 / 64)] & (1 << ($0 % 64)) != 0 }
    }
}
