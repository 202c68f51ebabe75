import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore

/// Builds a fixed index in a temporary file: entries are written at their position as
/// workers finish runs, in any order; chunks never written stay zero (= zero chunk).
/// Memory does not grow with the disk.
final class FixedIndexBuilder: Sendable {
    let file: OpenFile
    let diskSize: UInt64
    let chunkSize: UInt32

    init(path: String, diskSize: UInt64, chunkSize: UInt32) throws {
        file = try OpenFile(path: path, mode: [.readWrite, .create, .exclusive])
        self.diskSize = diskSize
        self.chunkSize = chunkSize
        let count = FixedIndexHeader.chunkCount(diskSize: diskSize, chunkSize: chunkSize)
        try file.truncate(to: UInt64(FixedIndexHeader.size) + count * UInt64(FixedIndexHeader.entrySize))
    }

    func write(entries: UnsafeRawBufferPointer, firstChunk: UInt64) throws {
        try file.write(entries, at: UInt64(FixedIndexHeader.size) + firstChunk * UInt64(FixedIndexHeader.entrySize))
    }

    /// Checksums the entries, writes the header and fsyncs, in the work area: the file is
    /// complete, not yet published. Returns the entries' checksum.
    func finish(snapshotID: SnapshotID, createdUnixSeconds: Int64) throws -> ChunkDigest {
        let count = FixedIndexHeader.chunkCount(diskSize: diskSize, chunkSize: chunkSize)
        let digest = try FixedIndexReader.digestEntries(file: file, count: count)
        let header = FixedIndexHeader(diskSize: diskSize, chunkSize: chunkSize, createdUnixSeconds: createdUnixSeconds,
                                      entriesDigest: digest, snapshotID: snapshotID.rawValue)
        let bytes = header.encode()
        _ = try FixedIndexHeader.decode(bytes, file: "new fixed index")  // decode what we publish
        try file.write(bytes, at: 0)
        try file.sync()
        return digest
    }

    /// Publishes the finished file as the fixed index of `snapshotID`.
    func publish(in repository: Repository, snapshotID: SnapshotID) throws {
        try repository.publishFixedIndex(file.path, snapshotID)
    }
}

/// Reads a published fixed index after checking its header and the checksum of its entries.
struct FixedIndexReader: Sendable {
    let header: FixedIndexHeader
    let file: any RandomAccessReading

    /// Entries read at a time (128 KiB): under the size from which a buffer is mapped on
    /// its own (`MemoryPolicy`), so every batch buffer comes from the heap and reuses warm
    /// pages instead of faulting in fresh zeroed ones (a megabyte per pass over the index).
    static let entriesPerRead = 1 << 12

    /// The fixed index of snapshot `id` in `repository` (opened through its key when sealed).
    init(_ repository: Repository, _ id: SnapshotID) throws {
        let path = repository.fixedIndexPath(id)
        guard FileSystem.exists(path) else { throw FormatError(file: path, "fixed index is missing") }
        try self.init(file: try repository.openFixedIndex(id.rawValue))
    }

    /// A plain fixed index file (a work area's).
    init(path: String) throws {
        guard FileSystem.exists(path) else { throw FormatError(file: path, "fixed index is missing") }
        try self.init(file: try OpenFile(path: path))
    }

    init(file: any RandomAccessReading) throws {
        self.file = file
        let path = file.path
        header = try FixedIndexHeader.decode(try file.readBytes(count: FixedIndexHeader.size, at: 0), file: path)
        let size = try file.size()
        guard size == header.fileSize else {
            throw FormatError(file: path, "is \(size) bytes; its header says \(header.fileSize) (truncated or extended)")
        }
        guard try Self.digestEntries(file: file, count: header.chunkCount) == header.entriesDigest else {
            throw FormatError(file: path, "entries checksum mismatch (damaged)")
        }
    }

    static func digestEntries(file: any RandomAccessReading, count: UInt64) throws -> ChunkDigest {
        var hasher = StreamingDigest()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: entriesPerRead * FixedIndexHeader.entrySize, alignment: 8)
        defer { buffer.deallocate() }
        var done: UInt64 = 0
        while done < count {
            let n = Int(min(UInt64(entriesPerRead), count - done))
            let batch = UnsafeMutableRawBufferPointer(rebasing: buffer[..<(n * FixedIndexHeader.entrySize)])
            try file.readExactly(into: batch, at: UInt64(FixedIndexHeader.size) + done * UInt64(FixedIndexHeader.entrySize))
            hasher.update(UnsafeRawBufferPointer(batch))
            done += UInt64(n)
        }
        return hasher.finish()
    }

    /// The entries of chunks `[first, first + buffer.count / 32)`, as stored, into `buffer`.
    func readEntries(first: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        precondition(buffer.count % FixedIndexHeader.entrySize == 0, "whole entries")
        let n = try file.read(into: buffer, at: UInt64(FixedIndexHeader.size) + first * UInt64(FixedIndexHeader.entrySize))
        guard n == buffer.count else { throw FormatError(file: file.path, "ends inside the entries") }
    }

    /// The digests of chunks `[first, first + count)`.
    func entries(first: UInt64, count: Int) throws -> [ChunkDigest] {
        var bytes = [UInt8](repeating: 0, count: count * FixedIndexHeader.entrySize)
        try bytes.withUnsafeMutableBytes { try readEntries(first: first, into: $0) }
        return bytes.withUnsafeBytes { raw in
            (0..<count).map { ChunkDigest(bytes: UnsafeRawBufferPointer(rebasing: raw[$0 * 32..<($0 + 1) * 32])) }
        }
    }

    /// Calls `body` with every (chunk number, digest), in order, a block at a time.
    func forEach(_ body: (UInt64, ChunkDigest) throws -> Void) throws {
        try forEach(chunks: 0..<header.chunkCount, body)
    }

    /// Calls `body` with (chunk number, digest) for the chunks of `chunks`, in order, reading
    /// `entriesPerRead` entries at a time.
    func forEach(chunks: Range<UInt64>, _ body: (UInt64, ChunkDigest) throws -> Void) throws {
        var first = chunks.lowerBound
        let end = min(chunks.upperBound, header.chunkCount)
        while first < end {
            let n = Int(min(UInt64(Self.entriesPerRead), end - first))
            for (i, digest) in try entries(first: first, count: n).enumerated() { try body(first + UInt64(i), digest) }
            first += UInt64(n)
        }
    }
}
