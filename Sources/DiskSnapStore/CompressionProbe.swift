import DiskSnapSys

/// Tells, from a sample, that a block would not shrink: random, encrypted or already
/// compressed data, which zstd's default level spends 4 ms per MiB on here only to store it
/// raw (docs/PERFORMANCE.md, "Incompressible blocks"). As ZFS's early abort and btrfs's
/// heuristic do, a cheap test comes first: 16 slices spread evenly over the block (an eighth
/// of it, at most 32 KiB) are compressed at level 1; if they do not shrink by 3%, the block is
/// stored raw. Any gain at all shows on the sample (text, code, tables and sparse data shrink
/// by a quarter or more even in 512-byte pieces); what the sample misses is only a repeat
/// across slices (random data written twice within one block), stored raw as it was before
/// chunk-level deduplication. Not thread-safe: one per pack builder.
final class CompressionProbe {
    static let slices = 16
    static let maximumSample = 32 << 10
    /// Blocks below this are compressed without a probe: the sample would be too short to say.
    static let minimumBlock = 16 << 10

    private let compressor = ZstdCompressor(level: 1)
    private let sample = UnsafeMutableRawBufferPointer.allocate(byteCount: maximumSample, alignment: 64)
    private let output = UnsafeMutableRawBufferPointer.allocate(byteCount: ZstdCompressor.bound(maximumSample), alignment: 64)

    init() {}

    deinit {
        sample.deallocate()
        output.deallocate()
    }

    /// Where the slices of a block of `count` bytes start, and how long each is (pure).
    static func slices(of count: Int) -> (starts: [Int], length: Int) {
        let length = min(maximumSample, count / 8) / slices
        let stride = count / slices
        return ((0..<slices).map { $0 * stride + (stride - length) / 2 }, length)
    }

    /// True unless the sample says the block will not shrink.
    func worthCompressing(_ block: UnsafeRawBufferPointer) -> Bool {
        guard block.count >= Self.minimumBlock else { return true }
        let (starts, length) = Self.slices(of: block.count)
        var fill = 0
        for start in starts {
            UnsafeMutableRawBufferPointer(rebasing: sample[fill..<fill + length])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: block[start..<start + length]))
            fill += length
        }
        guard let n = try? compressor.compress(UnsafeRawBufferPointer(rebasing: sample[..<fill]), into: output) else { return true }
        return n * 100 < fill * 97
    }
}
