import Synchronization
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog

/// An accomplished snapshot opened for reading: its record and its verified fixed index.
struct OpenedSnapshot: Sendable {
    let record: SnapshotRecord
    let fixed: FixedIndexReader

    static func open(_ name: String, in repository: Repository) throws -> OpenedSnapshot {
        let record = try Catalog(repository: repository).find(name)
        guard record.status == .accomplished else {
            throw EngineError.snapshotNotRestorable("snapshot \(record.snapshotId) is \(record.status.rawValue); only an accomplished snapshot can be read")
        }
        let fixed = try FixedIndexReader(repository, record.snapshotId)
        guard fixed.header.diskSize == record.sourceSize, fixed.header.snapshotID == record.snapshotId.rawValue else {
            throw FormatError(file: fixed.file.path, "does not belong to snapshot \(record.snapshotId) (size or id differ)")
        }
        return OpenedSnapshot(record: record, fixed: fixed)
    }

    var chunkSize: UInt64 { UInt64(fixed.header.chunkSize) }
    var size: UInt64 { record.sourceSize }

    /// The bytes of chunk `c`: `[c * chunkSize, min((c + 1) * chunkSize, size))`.
    func chunkRange(_ c: UInt64) -> ByteRange {
        ByteRange(start: c * chunkSize, end: min((c + 1) * chunkSize, size))
    }

    /// The bytes of the disk to read: all of it, or one partition of the recorded table.
    func byteRange(partition number: Int?) throws -> ByteRange {
        guard let number else { return ByteRange(start: 0, end: size) }
        let partitions = try recordedPartitions()
        guard let part = partitions.first(where: { $0.number == number }) else {
            throw EngineError(code: "InvalidParameter.Partition", "snapshot \(record.snapshotId) has no partition \(number) (it has \(partitions.map { String($0.number) }.joined(separator: ", ")))", exitStatus: .invalidParameter)
        }
        guard part.start + part.size <= size else {
            throw EngineError(code: "InvalidParameter.Partition", "partition \(number) ends past the disk", exitStatus: .invalidParameter)
        }
        return ByteRange(start: part.start, end: part.start + part.size)
    }

    /// Runs `body`, naming this snapshot and the chunk at disk offset `offset` in the coded
    /// error it throws.
    func naming<T>(chunkAt offset: UInt64, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as any CodedError {
            throw ContextError(underlying: error, context: "snapshot \(record.snapshotId), chunk at offset \(offset)")
        }
    }

    /// Reads the data chunks `chunks` of the run that starts at chunk `first` (`digests` are
    /// the run's entries) into `slot(c)`, in the order the store holds them: a block shared
    /// by several chunks (and by several snapshots of the same region, interleaved) is
    /// decompressed once per run.
    func readInStoreOrder(_ chunks: [Int], first: UInt64, digests: [ChunkDigest], reader: ChunkReader,
                          into slot: (Int) -> UnsafeMutableRawBufferPointer) throws {
        var reads: [(chunk: Int, location: ChunkLocation)] = []
        for c in chunks {
            reads.append((c, try naming(chunkAt: chunkRange(first + UInt64(c)).start) { try reader.locate(digests[c]) }))
        }
        reads.sort { ($0.location.pack, $0.location.offset, $0.location.blockOffset) < ($1.location.pack, $1.location.offset, $1.location.blockOffset) }
        for (k, (c, location)) in reads.enumerated() {
            try naming(chunkAt: chunkRange(first + UInt64(c)).start) {
                try reader.readAhead(reads[k...].lazy.map(\.location))
                try reader.read(digests[c], at: location, into: slot(c))
            }
        }
    }

    func recordedPartitions() throws -> [Partition] {
        guard let identity = record.identity, identity.partitionTableType != nil else {
            throw EngineError(code: "InvalidParameter.Partition", "snapshot \(record.snapshotId) recorded no partition table", exitStatus: .invalidParameter)
        }
        return identity.partitions
    }
}

/// A snapshot as a read-only disk image with random access, for `mount` and `export`: any
/// byte range is read on demand, each chunk fetched from its pack and verified against its
/// digest. Holds a shared repository lock while open, so nothing it references is removed.
///
/// Thread-safe. Readers come from a pool; each keeps its last decompressed block, and the
/// most recently returned reader is handed out first, so a sequential reader (a `dd`
/// through the mount, `qemu-img convert` over NBD) decompresses each block once.
public final class SnapshotImage: Sendable {
    public let record: SnapshotRecord
    let snapshot: OpenedSnapshot
    private let pool: ReaderPool
    private let locks: (HeldLock, HeldLock)

    public init(repository: Repository, snapshot name: String, command: String) throws {
        locks = (try repository.lock(.shared, for: command), try repository.readersLock())
        snapshot = try OpenedSnapshot.open(name, in: repository)
        record = snapshot.record
        let index = try ChunkLocator.open(repository)
        pool = ReaderPool(index: index, packs: PackFiles(repository: repository, index: index))
    }

    public var size: UInt64 { snapshot.size }
    public var chunkSize: UInt64 { snapshot.chunkSize }

    /// Bytes `[start, end)` of each recorded partition, by number; empty without a table.
    public var partitions: [(number: Int, range: ByteRange)] {
        ((try? snapshot.recordedPartitions()) ?? []).compactMap { part in
            part.start + part.size <= size && part.size > 0 ? (part.number, ByteRange(start: part.start, end: part.start + part.size)) : nil
        }
    }

    /// `[offset, offset + length)` as consecutive extents of zero chunks and data chunks (the
    /// first and last clipped to the range), from the fixed index alone.
    public func zeroExtents(offset: UInt64, length: UInt64) throws -> [(length: UInt64, zero: Bool)] {
        guard length > 0, offset < size else { return [] }
        let end = min(offset + length, size), chunkSize = snapshot.chunkSize
        var extents: [(length: UInt64, zero: Bool)] = []
        try snapshot.fixed.forEach(chunks: offset / chunkSize..<(end + chunkSize - 1) / chunkSize) { c, digest in
            let chunk = snapshot.chunkRange(c)
            let piece = min(chunk.end, end) - max(chunk.start, offset)
            if let tail = extents.last, tail.zero == digest.isZero {
                extents[extents.count - 1].length += piece
            } else {
                extents.append((piece, digest.isZero))
            }
        }
        return extents
    }

    /// Fills `output` with the disk's bytes from `offset`. The range must lie inside the disk.
    public func read(into output: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        guard offset <= size, UInt64(output.count) <= size - offset else {
            throw EngineError(code: "InvalidParameter.Range", "read of \(output.count) bytes at \(offset) passes the end of the \(size)-byte disk", exitStatus: .invalidParameter)
        }
        guard !output.isEmpty else { return }
        let chunkSize = snapshot.chunkSize
        let first = offset / chunkSize, end = (offset + UInt64(output.count) + chunkSize - 1) / chunkSize
        let digests = try snapshot.fixed.entries(first: first, count: Int(end - first))
        let reader = pool.take()
        defer { pool.give(reader) }
        var scratch: UnsafeMutableRawBufferPointer?
        defer { scratch?.deallocate() }
        for (i, digest) in digests.enumerated() {
            let chunk = snapshot.chunkRange(first + UInt64(i))
            let lower = max(chunk.start, offset), upper = min(chunk.end, offset + UInt64(output.count))
            let slot = UnsafeMutableRawBufferPointer(rebasing: output[Int(lower - offset)..<Int(upper - offset)])
            if digest.isZero {
                slot.initializeMemory(as: UInt8.self, repeating: 0)
                continue
            }
            try snapshot.naming(chunkAt: chunk.start) {
                let location = try reader.locate(digest)
                if lower == chunk.start && upper == chunk.end {
                    try reader.read(digest, at: location, into: slot)  // whole chunk: straight into place
                } else {
                    if scratch == nil { scratch = .allocate(byteCount: Int(chunkSize), alignment: 64) }
                    let whole = UnsafeMutableRawBufferPointer(rebasing: scratch![..<Int(chunk.count)])
                    try reader.read(digest, at: location, into: whole)
                    slot.copyMemory(from: UnsafeRawBufferPointer(rebasing: whole[Int(lower - chunk.start)..<Int(upper - chunk.start)]))
                }
            }
        }
    }
}

/// Chunk readers shared by the threads serving one image, last returned first out.
private final class ReaderPool: @unchecked Sendable {
    private let index: ChunkLocator
    private let packs: PackFiles
    private let free = Mutex<Int>(0)
    // Guarded by `free`'s lock; `ChunkReader` is used by one thread at a time.
    private nonisolated(unsafe) var readers: [ChunkReader] = []

    init(index: ChunkLocator, packs: PackFiles) {
        self.index = index
        self.packs = packs
    }

    func take() -> ChunkReader {
        free.withLock { _ in readers.popLast() } ?? ChunkReader(index: index, packs: packs)
    }

    func give(_ reader: ChunkReader) {
        free.withLock { _ in readers.append(reader) }
    }
}
