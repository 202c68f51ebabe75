import Testing
import Foundation
@testable import DiskSnapStore

@Suite struct CompressionProbeTests {
    private func decide(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { CompressionProbe().worthCompressing($0) }
    }

    private func random(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed
        return (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
    }

    @Test func slicesSpreadOverTheBlockWithinItsBounds() {
        for count in [16 << 10, 64 << 10, 1 << 20, (1 << 20) + 12345, 4 << 20] {
            let (starts, length) = CompressionProbe.slices(of: count)
            #expect(starts.count == 16 && length > 0 && length * 16 <= min(32 << 10, count / 8))
            #expect(starts.first! >= 0 && starts.last! + length <= count)
            #expect(zip(starts, starts.dropFirst()).allSatisfy { $0 + length <= $1 })
            #expect(starts.last! >= count * 15 / 16 - length, "the slices reach the end of the block")
        }
    }

    @Test func randomDataIsStoredRawAndEverythingThatShrinksIsCompressed() throws {
        #expect(!decide(random(1 << 20, seed: 1)), "random bytes")
        #expect(!decide(random(64 << 10, seed: 2)), "a 64 KiB random block (a dirty block of a VM)")
        #expect(decide(random(8 << 10, seed: 3)), "below the minimum the probe does not decide")
        // Text: words drawn at random from a small vocabulary.
        let words = ["block", "snapshot", "the", "of", "disk", "chunk", "index", "pack", "a", "restore"]
        var text: [UInt8] = []
        var state: UInt64 = 7
        while text.count < 1 << 20 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            text += Array((words[Int(state >> 60) % words.count] + " ").utf8)
        }
        #expect(decide(Array(text.prefix(1 << 20))))
        // Machine code: this test's own executable.
        let code = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "/proc/self/exe")).prefix(1 << 20))
        #expect(code.count < 64 << 10 || decide(code))
        // Random and zero 64 KiB pieces in turn (a half-filled region).
        var mixed: [UInt8] = []
        for piece in 0..<16 { mixed += piece % 2 == 0 ? random(64 << 10, seed: UInt64(piece)) : [UInt8](repeating: 0, count: 64 << 10) }
        #expect(decide(mixed))
        // Random data with one byte in four zeroed: it shrinks, a little.
        var sparse = random(1 << 20, seed: 9)
        for i in stride(from: 0, to: sparse.count, by: 4) { sparse[i] = 0 }
        #expect(decide(sparse))
    }
}
