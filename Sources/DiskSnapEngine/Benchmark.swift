import Foundation
import Dispatch
import Synchronization
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog

/// `disksnap bench`: the chunking core's stages measured one by one on every core, then a
/// real snapshot and restore in a temporary repository. Stage passes read from the page
/// cache (one warm-up pass first); each stage's time is its pass minus the read-only pass.
public struct Benchmark {
    public struct StageResult: Codable, Sendable {
        public var stage: String
        public var seconds: Double
        /// Allocated source bytes per second for this stage alone.
        public var bytesPerSecond: Double
        /// Compressed / raw, for zstd stages.
        public var ratio: Double?
    }

    public struct Result: Codable, Sendable {
        public var source: String
        public var sourceSize: UInt64
        public var allocatedBytes: UInt64
        public var chunkSize: Int
        public var compression: String
        public var workers: Int
        public var stages: [StageResult]
        public var snapshotSeconds: Double
        public var restoreSeconds: Double
        public var storeBytes: UInt64
        /// Seconds that hashing plus compressing the non-zero bytes take on every core: the
        /// machine's limit for a first snapshot at this level.
        public var limitSeconds: Double
        /// limitSeconds / snapshotSeconds.
        public var fractionOfLimit: Double
    }

    let workers: Int

    public init(workers: Int = Workers.defaultCount) { self.workers = workers }

    public func run(source path: String, chunkSize: ChunkSize, compression: Compression, scratch: String) throws -> Result {
        let source = try Source.open(path)
        let size = UInt64(chunkSize.bytes)
        let runs = WorkPlan.runs(dataRanges: try source.allDataRanges(), chunkSize: size, maxChunks: UInt64(max(1, Snapshotter.runBytes / chunkSize.bytes)))
        let allocated = runs.reduce(UInt64(0)) { $0 + min($1.end * size, source.size) - $1.first * size }
        _ = try pass(compression, source, runs, size, perChunk: false)  // warm the page cache
        let timed = try pass(compression, source, runs, size, perChunk: false)
        // A pass of its own: one context compressing both ways at once would evict the
        // other's tables from the core's cache and slow both.
        let chunkPass = try pass(compression, source, runs, size, perChunk: true)
        let workerCount = Double(min(workers, max(runs.count, 1)))
        func stage(_ name: String, _ nanoseconds: UInt64, ratio: Double? = nil) -> StageResult {
            let seconds = max(Double(nanoseconds) / 1e9 / workerCount, 1e-9)
            return StageResult(stage: name, seconds: seconds, bytesPerSecond: Double(allocated) / seconds, ratio: ratio)
        }
        var stages = [stage("read", timed.read), stage("zero check", timed.zero), stage("sha256", timed.hash)]
        if compression != .none {
            // What the store does (1 MiB blocks), then one frame per chunk for comparison.
            let ratio = { (output: UInt64) in timed.compressedInput > 0 ? Double(output) / Double(timed.compressedInput) : nil }
            stages.append(stage(compression.description, timed.compress, ratio: ratio(timed.compressedOutput)))
            stages.append(stage(compression.description + " per chunk", chunkPass.compress, ratio: ratio(chunkPass.compressedOutput)))
        }
        let limit = Double(timed.hash + timed.compress) / 1e9 / workerCount

        let repoPath = scratch + "/repo"
        let repository = try Repository.initialize(at: repoPath, config: RepositoryConfig(chunkSize: chunkSize, compression: compression))
        var request = CreateRequest(source: path, name: "bench")
        request.workers = workers
        let t0 = Date()
        let made = try Snapshotter(repository: repository).create(request).record
        let snapshotSeconds = Date().timeIntervalSince(t0)
        var restore = RestoreRequest(snapshot: made.snapshotId.rawValue, targetPath: scratch + "/restored.img")
        restore.workers = workers
        let t1 = Date()
        _ = try Restorer(repository: repository).restore(restore)
        let restoreSeconds = Date().timeIntervalSince(t1)
        guard try Self.digest(path, size: source.size) == Self.digest(restore.targetPath, size: source.size) else {
            throw EngineError(code: "Bench.RestoreMismatch", "the restored image differs from \(path)", exitStatus: .internalError)
        }
        let stats = try RepositoryStats.gather(repository)
        return Result(source: path, sourceSize: source.size, allocatedBytes: allocated, chunkSize: chunkSize.bytes,
                      compression: compression.description, workers: Int(workerCount), stages: stages,
                      snapshotSeconds: snapshotSeconds, restoreSeconds: restoreSeconds, storeBytes: stats.packBytes,
                      limitSeconds: limit, fractionOfLimit: snapshotSeconds > 0 ? limit / snapshotSeconds : 0)
    }

    /// SHA-256 of a file's first `size` bytes, read in 4 MiB pieces.
    static func digest(_ path: String, size: UInt64) throws -> ChunkDigest {
        let file = try OpenFile(path: path)
        var hasher = StreamingDigest()
        var offset: UInt64 = 0
        while offset < size {
            let piece = try file.readBytes(count: Int(min(4 << 20, size - offset)), at: offset)
            if piece.isEmpty { break }
            hasher.update(piece)
            offset += UInt64(piece.count)
        }
        return hasher.finish()
    }

    /// Nanoseconds each stage took, summed over the workers.
    final class StageClock: Sendable {
        let read = Atomic<UInt64>(0), zero = Atomic<UInt64>(0), hash = Atomic<UInt64>(0), compress = Atomic<UInt64>(0)
        let compressedInput = Atomic<UInt64>(0), compressedOutput = Atomic<UInt64>(0)
    }

    struct PassResult {
        var read, zero, hash, compress, compressedInput, compressedOutput: UInt64
    }

    /// One pass over the source on every worker, timing each stage of each chunk.
    private func pass(_ compression: Compression, _ source: Source, _ runs: [ChunkRun], _ chunkSize: UInt64, perChunk: Bool) throws -> PassResult {
        let clock = StageClock()
        let work = PassWork(compression: compression, source: source, runs: runs, chunkSize: chunkSize, perChunk: perChunk, clock: clock)
        try runParallel(workers: min(workers, max(runs.count, 1)), queue: WorkQueue(count: runs.count), progress: nil) { _, queue in
            try work.run(queue)
        }
        return PassResult(read: clock.read.load(ordering: .relaxed), zero: clock.zero.load(ordering: .relaxed),
                          hash: clock.hash.load(ordering: .relaxed), compress: clock.compress.load(ordering: .relaxed),
                          compressedInput: clock.compressedInput.load(ordering: .relaxed),
                          compressedOutput: clock.compressedOutput.load(ordering: .relaxed))
    }
}

private struct PassWork: Sendable {
    let compression: Compression
    let source: Source
    let runs: [ChunkRun]
    let chunkSize: UInt64
    /// One zstd frame per chunk instead of blocks, for comparison.
    let perChunk: Bool
    let clock: Benchmark.StageClock

    func run(_ queue: WorkQueue) throws {
        let buffer = WorkPlan.allocateRunBuffer(runs, chunkSize: chunkSize)
        defer { buffer.deallocate() }
        // Blocks as the store makes them (consecutive non-zero chunks of a run, up to
        // `Snapshotter.blockBytes`), or one frame per chunk.
        let blockCapacity = max(Snapshotter.blockBytes, Int(chunkSize))
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: blockCapacity, alignment: 64)
        defer { block.deallocate() }
        let compressed = UnsafeMutableRawBufferPointer.allocate(byteCount: ZstdCompressor.bound(blockCapacity), alignment: 64)
        defer { compressed.deallocate() }
        var compressor: ZstdCompressor?
        if case .zstd(let level) = compression { compressor = ZstdCompressor(level: level) }
        var read: UInt64 = 0, zero: UInt64 = 0, hash: UInt64 = 0, compress: UInt64 = 0, input: UInt64 = 0, output: UInt64 = 0
        var fill = 0
        func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
        func endBlock() throws {
            guard fill > 0, let compressor else { return }
            let t = now()
            let n = try compressor.compress(UnsafeRawBufferPointer(rebasing: block[..<fill]), into: compressed)
            output += UInt64(min(n, fill))
            compress += now() - t
            input += UInt64(fill)
            fill = 0
        }
        while let i = queue.take() {
            let run = runs[i]
            let start = run.first * chunkSize, end = min(run.end * chunkSize, source.size)
            let span = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(end - start)])
            var t = now()
            try source.file.readExactly(into: span, at: start)
            read += now() - t
            var offset = 0
            while offset < span.count {
                let chunk = UnsafeRawBufferPointer(rebasing: span[offset..<min(offset + Int(chunkSize), span.count)])
                offset += Int(chunkSize)
                t = now()
                let isZero = isAllZero(chunk)
                zero += now() - t
                if isZero { continue }
                t = now()
                _ = ChunkDigest(hashing: chunk)
                hash += now() - t
                if let compressor, perChunk {
                    t = now()
                    let n = try compressor.compress(chunk, into: compressed)
                    output += UInt64(min(n, chunk.count))
                    compress += now() - t
                    input += UInt64(chunk.count)
                } else if compressor != nil {
                    if fill + chunk.count > blockCapacity { try endBlock() }  // times itself
                    t = now()
                    UnsafeMutableRawBufferPointer(rebasing: block[fill..<fill + chunk.count]).copyMemory(from: chunk)
                    fill += chunk.count
                    compress += now() - t
                }
            }
            try endBlock()
        }
        clock.read.wrappingAdd(read, ordering: .relaxed)
        clock.zero.wrappingAdd(zero, ordering: .relaxed)
        clock.hash.wrappingAdd(hash, ordering: .relaxed)
        clock.compress.wrappingAdd(compress, ordering: .relaxed)
        clock.compressedInput.wrappingAdd(input, ordering: .relaxed)
        clock.compressedOutput.wrappingAdd(output, ordering: .relaxed)
    }
}

/// The image `bench` uses when given none: like tools/make-test-disk's data without the
/// filesystem: real system files (compressible like real disks), random bytes, and holes.
public enum BenchmarkImage {
    public static func generate(path: String, sizeBytes: UInt64) throws {
        let file = try OpenFile(path: path, mode: [.writeOnly, .create, .truncate])
        try file.truncate(to: sizeBytes)
        let realBytes = sizeBytes * 45 / 100, randomBytes = sizeBytes / 8
        var offset: UInt64 = 1 << 20
        // Real files, in 1 MiB-aligned runs separated by holes.
        for directory in ["/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/share/doc", "/usr/lib"] where offset < realBytes {
            for name in (try? FileSystem.listDirectory(directory)) ?? [] where offset < realBytes {
                let source = directory + "/" + name
                guard let status = try? FileSystem.status(source), status.isRegularFile, status.size > 0, status.size < 64 << 20,
                      let bytes = try? FileSystem.readFile(source) else { continue }
                let count = min(UInt64(bytes.count), realBytes - offset)
                try file.write(Array(bytes.prefix(Int(count))), at: offset)
                offset += count
                if offset % (8 << 20) < count { offset = (offset + (4 << 20)) & ~((1 << 20) - 1) }  // a hole now and then
            }
        }
        var generator = SystemRandomNumberGenerator()
        var random = [UInt8](repeating: 0, count: 1 << 20)
        var written: UInt64 = 0
        offset = (offset + (16 << 20)) & ~((1 << 20) - 1)
        while written < randomBytes && offset + UInt64(random.count) <= sizeBytes {
            for i in stride(from: 0, to: random.count, by: 8) {
                withUnsafeBytes(of: generator.next() as UInt64) { random.replaceSubrange(i..<i + 8, with: $0) }
            }
            try file.write(random, at: offset)
            offset += UInt64(random.count)
            written += UInt64(random.count)
        }
        try file.sync()
    }
}
