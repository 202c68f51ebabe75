import Foundation
import ArgumentParser
import DiskSnapSys
import DiskSnapFormat
import DiskSnapEngine

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure the chunking core: read, zero check, SHA-256 and zstd per stage on every core, then a snapshot and a restore (no repository needed).")

    @Argument(help: "Image or block device to measure (default: a generated image).") var source: String?
    @Option(name: .customLong("chunk-size"), help: "Chunk size (repeatable).") var chunkSizes: [String] = ["64K"]
    @Option(name: .customLong("compression"), help: "zstd:LEVEL or none (repeatable).") var compressions: [String] = ["zstd:3"]
    @Option(help: "Size of the generated image in MiB.") var sizeMib: Int = 512
    @Option(help: "Worker threads (default: one per core).") var workers: Int?
    @Flag(help: "Print the results as JSON.") var json = false

    func validate() throws {
        if sizeMib < 8 { throw ValidationError("--size-mib must be at least 8") }
    }

    func run() throws {
        try runReporting(json: json) {
            let sizes = try chunkSizes.map { try ChunkSize(parsing: $0) }
            let levels = try compressions.map { try Compression(parsing: $0) }
            let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("disksnap-bench-\(FileSystem.processID)").path
            try FileSystem.makeDirectories(scratch)
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let image = source ?? scratch + "/bench.img"
            if source == nil { try BenchmarkImage.generate(path: image, sizeBytes: UInt64(sizeMib) << 20) }
            let bench = Benchmark(workers: workers ?? Workers.defaultCount)
            var results: [Benchmark.Result] = []
            for size in sizes {
                for level in levels {
                    let run = scratch + "/run-\(results.count)"
                    try FileSystem.makeDirectories(run)
                    results.append(try bench.run(source: image, chunkSize: size, compression: level, scratch: run))
                    try? FileManager.default.removeItem(atPath: run)
                }
            }
            if json { Output.json(results); return }
            let gbps = { (v: Double) in String(format: "%.2f", v / 1e9) }
            for r in results {
                Output.line("\(r.source): \(ByteFormat.human(r.allocatedBytes)) allocated of \(ByteFormat.human(r.sourceSize)), chunk \(r.chunkSize >> 10) KiB, \(r.compression), \(r.workers) workers")
                Output.line(Table.format([["STAGE", "SECONDS", "GB/s", "RATIO"]] + r.stages.map {
                    [$0.stage, String(format: "%.3f", $0.seconds), gbps($0.bytesPerSecond), $0.ratio.map { String(format: "%.3f", $0) } ?? "-"]
                } + [
                    ["snapshot", String(format: "%.3f", r.snapshotSeconds), gbps(Double(r.allocatedBytes) / r.snapshotSeconds), "-"],
                    ["restore", String(format: "%.3f", r.restoreSeconds), gbps(Double(r.sourceSize) / r.restoreSeconds), "-"],
                ]))
                Output.line(String(format: "store %@; limit (hash + compress on every core) %.3f s; snapshot at %.0f%% of it\n",
                                   ByteFormat.human(r.storeBytes), r.limitSeconds, r.fractionOfLimit * 100))
            }
        }
    }
}
