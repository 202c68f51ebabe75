import Synchronization
#if canImport(Glibc)
import Glibc
#endif
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapQcow2

/// Compares a disk (an existing file or block device) with a snapshot chunk by chunk and,
/// when repairing, writes back only the chunks that differ. The engine of `restore
/// --in-place`, its `--dry-run` and `--verify`, and `diff` against a live disk.
///
/// Each worker takes a run of chunks, reads the target's bytes for it with one pread, and
/// compares each chunk: a zero entry against an all-zero test, a data chunk by SHA-256 of
/// the target's bytes against the entry. A chunk cut by the compared range (a partition
/// that does not start on a chunk boundary) is compared byte for byte with the stored
/// chunk. Differing data chunks are fetched from the store in pack order, as a full
/// restore does, and written in runs of consecutive chunks; differing zero chunks become
/// holes in a file and BLKZEROOUT ranges on a device.
final class InPlaceWork: Sendable {
    let snapshot: OpenedSnapshot
    let index: ChunkLocator
    let packs: PackFiles
    /// The target, open for reading (and writing when `writer` is set).
    let file: OpenFile
    /// Reads the target around the page cache when aligned: the comparison reads every
    /// byte once and keeps none.
    let targetReader: DirectReader
    /// A qcow2 disk compared as its guest sees it (`diff` against a qcow2 image).
    let qcow2: Qcow2Image?
    let writer: DirectWriter?
    let isBlockDevice: Bool
    /// The disk bytes compared; disk offset `range.start` is target offset 0.
    let range: ByteRange
    let runs: [ChunkRun]
    let progress: Progress
    /// Differing chunk numbers are kept (for `diff`) when set.
    let collect: Bool

    let examined = Atomic<UInt64>(0)
    let differingChunks = Atomic<UInt64>(0)
    let differingBytes = Atomic<UInt64>(0)
    let written = Atomic<UInt64>(0)
    let collected = Mutex<[UInt64]>([])

    init(snapshot: OpenedSnapshot, index: ChunkLocator, packs: PackFiles, file: OpenFile, writer: DirectWriter?,
         isBlockDevice: Bool, range: ByteRange, progress: Progress, collect: Bool = false, qcow2: Qcow2Image? = nil) {
        precondition(qcow2 == nil || writer == nil, "a qcow2 disk is compared, never repaired in place")
        self.qcow2 = qcow2
        self.snapshot = snapshot
        self.index = index
        self.packs = packs
        self.file = file
        targetReader = DirectReader(file: file)
        self.writer = writer
        self.isBlockDevice = isBlockDevice
        self.range = range
        self.progress = progress
        self.collect = collect
        runs = WorkPlan.runs(dataRanges: range.count > 0 ? [range] : [], chunkSize: snapshot.chunkSize,
                             maxChunks: UInt64(max(1, Snapshotter.runBytes / Int(snapshot.chunkSize))))
    }

    /// Runs the comparison (and repair) on `workers` threads.
    func run(workers: Int) throws {
        try runParallel(workers: min(workers, max(runs.count, 1)), queue: WorkQueue(count: runs.count), progress: progress) { _, queue in
            try self.work(queue)
        }
    }

    /// The sorted numbers of the chunks that differed (when collecting).
    var differingChunkNumbers: [UInt64] { collected.withLock { $0.sorted() } }

    private func clipped(_ chunk: ByteRange) -> ByteRange? {
        let lower = max(chunk.start, range.start), upper = min(chunk.end, range.end)
        return lower < upper ? ByteRange(start: lower, end: upper) : nil
    }

    private func work(_ queue: WorkQueue) throws {
        let chunkSize = snapshot.chunkSize
        let reader = ChunkReader(index: index, packs: packs)
        let identity = packs.repository.chunkIdentity
        let current = WorkPlan.allocateRunBuffer(runs, chunkSize: chunkSize)
        let desired = WorkPlan.allocateRunBuffer(runs, chunkSize: chunkSize)
        defer {
            current.deallocate()
            desired.deallocate()
        }
        var fetched = [Bool](repeating: false, count: WorkPlan.maxChunks(runs))
        while let i = queue.take() {
            let run = runs[i]
            let runStart = run.first * chunkSize
            let count = Int(run.end - run.first)
            guard let span = clipped(ByteRange(start: runStart, end: min(run.end * chunkSize, snapshot.size))) else { continue }
            let digests = try snapshot.fixed.entries(first: run.first, count: count)
            func slot(_ buffer: UnsafeMutableRawBufferPointer, _ r: ByteRange) -> UnsafeMutableRawBufferPointer {
                UnsafeMutableRawBufferPointer(rebasing: buffer[Int(r.start - runStart)..<Int(r.end - runStart)])
            }
            func fetch(_ c: Int) throws {
                let chunk = snapshot.chunkRange(run.first + UInt64(c))
                try snapshot.naming(chunkAt: chunk.start) { try reader.read(digests[c], at: try reader.locate(digests[c]), into: slot(desired, chunk)) }
                fetched[c] = true
            }
            do {
                if let qcow2 {
                    try qcow2.read(into: slot(current, span), at: span.start - range.start)
                } else {
                    try targetReader.readExactly(into: slot(current, span), at: span.start - range.start)
                }
            } catch let error as any CodedError {
                throw ContextError(underlying: error, context: "reading \(file.path) at offset \(span.start - range.start)")
            }
            examined.wrappingAdd(span.count, ordering: .relaxed)

            // 1. Which chunks differ.
            for c in 0..<count { fetched[c] = false }
            var differing: [Int] = []
            var bytes: UInt64 = 0
            for c in 0..<count {
                let chunk = snapshot.chunkRange(run.first + UInt64(c))
                guard let clip = clipped(chunk) else { continue }
                let have = UnsafeRawBufferPointer(slot(current, clip))
                let same: Bool
                if digests[c].isZero {
                    same = isAllZero(have)
                } else if clip == chunk {
                    same = !isAllZero(have) && identity.digest(of: have) == digests[c]
                } else {
                    try fetch(c)
                    same = memcmp(have.baseAddress!, slot(desired, clip).baseAddress!, have.count) == 0
                }
                if !same {
                    differing.append(c)
                    bytes += clip.count
                }
            }
            differingChunks.wrappingAdd(UInt64(differing.count), ordering: .relaxed)
            differingBytes.wrappingAdd(bytes, ordering: .relaxed)
            if collect, !differing.isEmpty {
                collected.withLock { $0 += differing.map { run.first + UInt64($0) } }
            }
            guard let writer, !differing.isEmpty else {
                progress.add(span.count)
                continue
            }

            // 2. The stored bytes of the differing data chunks, in the order the store holds them.
            try snapshot.readInStoreOrder(differing.filter { !digests[$0].isZero && !fetched[$0] }, first: run.first, digests: digests,
                                          reader: reader) { slot(desired, snapshot.chunkRange(run.first + UInt64($0))) }

            // 3. Consecutive differing chunks of the same kind are written together.
            var k = 0
            while k < differing.count {
                var last = k
                while last + 1 < differing.count, differing[last + 1] == differing[last] + 1,
                      digests[differing[last + 1]].isZero == digests[differing[k]].isZero { last += 1 }
                let lower = clipped(snapshot.chunkRange(run.first + UInt64(differing[k])))!.start
                let upper = clipped(snapshot.chunkRange(run.first + UInt64(differing[last])))!.end
                let piece = ByteRange(start: lower, end: upper)
                let at = lower - range.start
                if digests[differing[k]].isZero {
                    if isBlockDevice {
                        try BlockDevice.zeroOut(file, offset: at, length: piece.count)
                    } else {
                        try file.punchHole(offset: at, length: piece.count)
                    }
                } else {
                    try writer.write(UnsafeRawBufferPointer(slot(desired, piece)), at: at)
                }
                written.wrappingAdd(piece.count, ordering: .relaxed)
                k = last + 1
            }
            progress.add(span.count)
        }
    }
}
