import Synchronization
import DiskSnapSys
import DiskSnapFormat

/// Stores new chunks for one writer process: packs are filled in its temporary area, each
/// fsynced when closed; `finish` moves them into `packs/` and publishes one chunk index
/// segment naming them. Shared by the worker threads of a pipeline.
///
/// Write order (docs/DESIGN.md): pack fsync -> rename into packs/ -> fsync packs/ ->
/// index segment published. Until the segment exists no one else knows the chunks.
public final class ChunkWriter: Sendable {
    public struct Summary: Sendable {
        public var chunksStored: UInt64 = 0
        public var bytesStored: UInt64 = 0
        public var packsWritten = 0
    }

    private struct OpenPack {
        let id: PackID
        let file: OpenFile
        var size: UInt64
        var entries: [PackEntry] = []
    }

    private struct State {
        var claimed: Set<ChunkDigest> = []
        var current: OpenPack?
        var closed: [(PackID, [PackEntry])] = []
        var summary = Summary()
    }

    public let repository: Repository
    public let index: ChunkIndex
    private let area: TemporaryArea
    private let state = Mutex(State())
    private let packTargetSize: UInt64

    public init(repository: Repository, index: ChunkIndex, area: TemporaryArea, packTargetSize: Int = PackFormat.targetSize) {
        self.repository = repository
        self.index = index
        self.area = area
        self.packTargetSize = UInt64(packTargetSize)
    }

    /// True when the caller must store `digest`: it is neither in the index nor claimed by
    /// another worker of this writer. False means the store has (or will have) it.
    public func claim(_ digest: ChunkDigest) -> Bool {
        if index.contains(digest) { return false }
        return state.withLock { $0.claimed.insert(digest).inserted }
    }

    /// Appends one claimed chunk, as stored bytes. Closes the pack when it is full.
    public func append(_ digest: ChunkDigest, stored: UnsafeRawBufferPointer, rawLength: Int, encoding: ChunkEncoding) throws {
        let full: OpenPack? = try state.withLock { (s) throws -> OpenPack? in
            if s.current == nil { s.current = try openPack() }
            let offset = s.current!.size
            try s.current!.file.write(stored, at: offset)
            s.current!.size += UInt64(stored.count)
            s.current!.entries.append(PackEntry(digest: digest, offset: offset, storedLength: UInt32(stored.count),
                                                rawLength: UInt32(rawLength), encoding: encoding))
            s.summary.chunksStored += 1
            s.summary.bytesStored += UInt64(stored.count)
            guard s.current!.size >= packTargetSize else { return nil }
            defer { s.current = nil }
            return s.current
        }
        if let full { try close(full) }
    }

    private func openPack() throws -> OpenPack {
        let id = PackID.generate()
        let file = try OpenFile(path: area.path(id.hex + ".pack"), mode: [.writeOnly, .create, .exclusive])
        let header = PackFormat.encodeHeader()
        try file.write(header, at: 0)
        return OpenPack(id: id, file: file, size: UInt64(header.count))
    }

    /// Writes the table of contents and trailer and fsyncs; outside the lock, so other
    /// workers keep appending to a new pack meanwhile.
    private func close(_ pack: OpenPack) throws {
        let (toc, trailer) = PackFormat.encodeTrailer(entries: pack.entries, tocOffset: pack.size)
        try pack.file.write(toc + trailer, at: pack.size)
        try pack.file.sync()
        state.withLock { $0.closed.append((pack.id, pack.entries)); $0.summary.packsWritten += 1 }
    }

    /// Publishes everything stored: closes the open pack, moves the packs into `packs/` and
    /// writes their index segment. Returns what was stored.
    public func finish() throws -> Summary {
        if let last = state.withLock({ s -> OpenPack? in defer { s.current = nil }; return s.current }) {
            try close(last)
        }
        let (closed, summary) = state.withLock { ($0.closed, $0.summary) }
        guard !closed.isEmpty else { return summary }
        for (id, _) in closed {
            try FileSystem.rename(area.path(id.hex + ".pack"), to: repository.packPath(id))
        }
        try FileSystem.syncDirectory(repository.packsDirectory)
        var segment = ChunkIndexFormat.Segment(packs: closed.map(\.0), entries: [])
        for (ordinal, (_, entries)) in closed.enumerated() {
            for e in entries {
                segment.entries.append(.init(digest: e.digest, pack: UInt32(ordinal), offset: e.offset,
                                             storedLength: e.storedLength, rawLength: e.rawLength, encoding: e.encoding))
            }
        }
        let bytes = ChunkIndexFormat.encode(segment)
        _ = try ChunkIndexFormat.decode(bytes, file: "new index segment")  // decode what we publish
        try repository.publish(bytes, to: "\(repository.indexDirectory)/\(closed[0].0.hex).idx")
        state.withLock { $0.closed = [] }
        return summary
    }
}
