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

    /// Digests are uniform already: two words of the digest give the probe sequence
    /// (computed in place: gc probes every chunk of every snapshot, no allocation each).
    @inline(__always)
    private func position(_ digest: ChunkDigest, probe: UInt64) -> UInt64 {
        (digest.secondWord &+ probe &* (digest.thirdWord | 1)) % bitCount
    }

    public mutating func insert(_ digest: ChunkDigest) {
        for probe in 0..<UInt64(Self.probes) {
            let p = position(digest, probe: probe)
            bits[Int(p / 64)] |= 1 << (p % 64)
        }
    }

    public func mayContain(_ digest: ChunkDigest) -> Bool {
        for probe in 0..<UInt64(Self.probes) {
            let p = position(digest, probe: probe)
            if bits[Int(p / 64)] & (1 << (p % 64)) == 0 { return false }
        }
        return true
    }
}
