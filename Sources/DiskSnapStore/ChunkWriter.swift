import Synchronization
import Dispatch
import DiskSnapSys
import DiskSnapFormat
import DiskSnapSeal

/// Stores new chunks for one writer process: packs are filled in its temporary area, each
/// fsynced when closed; `finish` moves them into `packs/` and publishes one chunk index
/// segment naming them. Shared by the worker threads of a pipeline; each worker fills packs
/// of its own through a `PackBuilder`, so appending takes no lock.
///
/// Memory is bounded whatever the number of new chunks: a claimed digest stays in the claim
/// set only until its pack is closed and its entries are spilled, sorted, as a run in the work
/// area (`SpilledRuns`). A chunk seen twice in one snapshot is stored once however far apart
/// the two are: the second finds the first in the claim set or in a run. `finish` merges the
/// runs into the published segment.
///
/// Write order (docs/DESIGN.md): pack fsync -> rename into packs/ -> fsync packs/ ->
/// index segment published. Until the segment exists no one else knows the chunks.
public final class ChunkWriter: Sendable {
    public struct Summary: Sendable {
        public var chunksStored: UInt64 = 0
        public var bytesStored: UInt64 = 0
        public var packsWritten = 0
    }

    struct ClosedPack: Sendable {
        let id: PackID
        let chunks: UInt64
        let storedBytes: UInt64
    }

    /// One lock per shard of the digest space: two workers claiming different chunks rarely
    /// meet on a lock.
    private final class ClaimShard: Sendable {
        let claimed = Mutex(Set<ChunkDigest>())
    }

    public let repository: Repository
    /// The store's index, as this writer deduplicates against it.
    public let store: ChunkLocator
    let area: TemporaryArea
    let packTargetSize: UInt64
    private let shards: [ClaimShard] = (0..<64).map { _ in ClaimShard() }
    private let runs: SpilledRuns
    private let closedPacks = Mutex([ClosedPack]())
    /// For a bucket: packs go up as they close, while the workers fill the next ones.
    private let uploads: PackUploads?

    /// `expectedChunks` sizes the filter of spilled digests (the source's chunk count).
    public init(repository: Repository, store: ChunkLocator, area: TemporaryArea, expectedChunks: UInt64 = 1 << 16,
                packTargetSize: Int = PackFormat.targetSize) {
        self.repository = repository
        self.store = store
        self.area = area
        self.packTargetSize = UInt64(packTargetSize)
        runs = SpilledRuns(area: area, expectedEntries: expectedChunks)
        uploads = repository.remote == nil ? nil : PackUploads(repository: repository, area: area)
    }

    private func shard(_ digest: ChunkDigest) -> ClaimShard { shards[Int(digest.leadingWord % UInt64(shards.count))] }

    /// True when the caller must store `digest`: it is neither in the store nor claimed or
    /// stored by another worker of this writer. False means the store has (or will have) it.
    public func claim(_ digest: ChunkDigest) throws -> Bool {
        if try store.contains(digest) { return false }
        return try shard(digest).claimed.withLock { claimed in
            if claimed.contains(digest) { return false }
            // Spilled runs become visible before their digests leave the claim set (both under
            // this shard's lock), so a digest is always found in one or the other.
            if try runs.contains(digest) { return false }
            claimed.insert(digest)
            return true
        }
    }

    /// A pack filler for one worker thread, compressing blocks of up to `blockCapacity` raw bytes.
    public func makePackBuilder(compression: Compression, blockCapacity: Int) -> PackBuilder {
        PackBuilder(writer: self, compression: compression, blockCapacity: blockCapacity)
    }

    /// A builder closed a pack (fsynced in the work area): its entries join the runs; once
    /// spilled, their digests leave the claim set.
    func closed(id: PackID, entries: [PackEntry], storedBytes: UInt64) throws {
        closedPacks.withLock { $0.append(ClosedPack(id: id, chunks: UInt64(entries.count), storedBytes: storedBytes)) }
        uploads?.start(id)
        try runs.add(pack: id, entries: entries) { spilled in
            for e in spilled { _ = shard(e.digest).claimed.withLock { $0.remove(e.digest) } }
        }
    }

    /// Publishes everything the builders closed: moves the packs into `packs/` and writes
    /// their index segment, merged from the runs. Every builder must have been finished.
    /// Returns what was stored.
    public func finish() throws -> Summary {
        let packs = closedPacks.withLock { $0 }
        var summary = Summary()
        summary.packsWritten = packs.count
        for pack in packs {
            summary.chunksStored += pack.chunks
            summary.bytesStored += pack.storedBytes
        }
        guard !packs.isEmpty else { return summary }
        if let uploads {
            try uploads.wait()  // every pack is in the bucket before the segment that names them
        } else {
            try repository.publishPacks(packs.map(\.id), from: area)
        }
        let merged = area.path("segment.idx")
        _ = try runs.merge(to: merged)
        try repository.publishSegment(merged, name: packs[0].id.hex)
        closedPacks.withLock { $0 = [] }
        return summary
    }
}

/// Fills packs for one worker thread. New chunks are gathered into a block (the caller
/// ends a block at the end of each run of the disk, so a block holds chunks that lie close
/// together) and the block is compressed as one zstd frame: one 4 MiB frame compresses
/// better and faster than 64 frames of 64 KiB (docs/PERFORMANCE.md). A block zstd does not
/// shrink is stored raw, and so is one a sample shows will not (`CompressionProbe`).
///
/// Blocks are gathered in an aligned staging buffer and written a staging buffer at a time
/// (on a thread of its own, while the worker fills a second one) through an `O_DIRECT`
/// descriptor: a snapshot writes each pack once and never reads it back, so the page cache
/// would only cost a copy (the largest kernel cost in a profile of the first snapshot) and a
/// long final fsync. The last, partial piece, the table of
/// contents and the trailer go through the page cache; a filesystem without `O_DIRECT`
/// gets every byte that way. Not shared between threads.
public final class PackBuilder {
    static let stagingBytes = 4 << 20

    private struct OpenPack {
        let id: PackID
        let writer: DirectWriter
        var file: OpenFile { writer.file }
        /// Bytes of the pack so far: written pieces plus the staging buffer's fill.
        var size: UInt64
        /// Where the staging buffer's first byte goes.
        var stagedAt: UInt64 = 0
        var entries: [PackEntry] = []
        /// Bytes of the blocks (each counted once, however many chunks it holds).
        var blockBytes: UInt64 = 0
    }

    private let writer: ChunkWriter
    private let compressor: ZstdCompressor?
    private let probe = CompressionProbe()
    /// The staging buffer being filled, and the other one, whose write may be in flight.
    private var staging = MemoryPolicy.allocateLarge(byteCount: PackBuilder.stagingBytes)
    private var spare = MemoryPolicy.allocateLarge(byteCount: PackBuilder.stagingBytes)
    private let background = BackgroundWrite()
    private var fill = 0
    private var current: OpenPack?
    /// The chunks of the block being gathered, in the caller's memory until `endBlock`.
    private var pending: [(digest: ChunkDigest, bytes: UnsafeRawBufferPointer)] = []
    private var pendingBytes = 0
    /// Where non-adjacent chunks are put back to back for compression.
    private let block: UnsafeMutableRawBufferPointer
    private let compressed: UnsafeMutableRawBufferPointer
    /// An encrypted repository's block, sealed (grown to the largest block sealed).
    private var sealedBlock = UnsafeMutableRawBufferPointer.allocate(byteCount: 0, alignment: 64)

    init(writer: ChunkWriter, compression: Compression, blockCapacity: Int) {
        self.writer = writer
        if case .zstd(let level) = compression { compressor = ZstdCompressor(level: level) } else { compressor = nil }
        block = .allocate(byteCount: blockCapacity, alignment: 64)
        compressed = .allocate(byteCount: ZstdCompressor.bound(blockCapacity), alignment: 64)
    }

    deinit {
        background.drain()  // before the buffers go: the write may still be reading one
        staging.deallocate()
        spare.deallocate()
        block.deallocate()
        compressed.deallocate()
        sealedBlock.deallocate()
    }

    /// Adds one claimed chunk to the block being gathered (ending that block first when the
    /// chunk would not fit). The chunk's bytes are not copied: the caller keeps them in place
    /// and unchanged until `endBlock()` (or `finish()`) returns.
    public func add(_ digest: ChunkDigest, _ chunk: UnsafeRawBufferPointer) throws {
        precondition(chunk.count > 0 && chunk.count <= block.count, "a chunk must be 1 byte to a block")
        if pendingBytes + chunk.count > block.count { try endBlock() }
        pending.append((digest, chunk))
        pendingBytes += chunk.count
    }

    /// The pending chunks as one buffer: in place when they lie back to back in the caller's
    /// memory (a run of new data, the common case of a first snapshot), else copied together.
    private func gathered() -> UnsafeRawBufferPointer {
        let first = pending[0].bytes.baseAddress!
        if zip(pending, pending.dropFirst()).allSatisfy({ $0.bytes.baseAddress! + $0.bytes.count == $1.bytes.baseAddress! }) {
            return UnsafeRawBufferPointer(start: first, count: pendingBytes)
        }
        var fill = 0
        for chunk in pending {
            UnsafeMutableRawBufferPointer(rebasing: block[fill..<fill + chunk.bytes.count]).copyMemory(from: chunk.bytes)
            fill += chunk.bytes.count
        }
        return UnsafeRawBufferPointer(rebasing: block[..<fill])
    }

    /// Compresses the gathered chunks as one block and appends it to the pack; closes the
    /// pack when it is full.
    public func endBlock() throws {
        guard !pending.isEmpty else { return }
        let raw = gathered()
        var stored = raw, encoding = ChunkEncoding.raw
        if let compressor, probe.worthCompressing(raw) {
            let n = try compressor.compress(raw, into: compressed)
            if n < raw.count {
                stored = UnsafeRawBufferPointer(rebasing: compressed[..<n])
                encoding = .zstd
            }
        }
        var blockOffset: UInt32 = 0
        let chunks = pending.map { chunk in
            defer { blockOffset += UInt32(chunk.bytes.count) }
            return (digest: chunk.digest, rawLength: UInt32(chunk.bytes.count), blockOffset: blockOffset)
        }
        try append(stored, encoding: encoding, chunks: chunks)
        pending.removeAll(keepingCapacity: true)
        pendingBytes = 0
    }

    /// Appends a block another repository stored, as it is (`copy`: no compression again):
    /// `stored` is its stored bytes, `chunks` the claimed chunks it holds, which must cover
    /// its decoded bytes. The block being gathered is stored first.
    public func addStoredBlock(_ stored: UnsafeRawBufferPointer, encoding: ChunkEncoding,
                               chunks: [(digest: ChunkDigest, rawLength: UInt32, blockOffset: UInt32)]) throws {
        precondition(!chunks.isEmpty && stored.count > 0, "a stored block holds chunks")
        try endBlock()
        try append(stored, encoding: encoding, chunks: chunks)
    }

    /// Appends one block (its stored bytes) and the entries of its chunks to the open pack,
    /// opening one first if needed; closes the pack when it is full.
    private func append(_ stored: UnsafeRawBufferPointer, encoding: ChunkEncoding,
                        chunks: [(digest: ChunkDigest, rawLength: UInt32, blockOffset: UInt32)]) throws {
        if current == nil { try openPack() }
        let offset = current!.size
        var storedLength = stored.count
        if let sealer = writer.repository.sealer {
            // Sealed where it lies: the context names this pack and offset (docs/FORMAT.md).
            // Into a buffer kept from block to block, then staged: no allocation per block.
            if sealedBlock.count < stored.count + Sealer.overhead {
                sealedBlock.deallocate()
                sealedBlock = .allocate(byteCount: stored.count + Sealer.overhead, alignment: 64)
            }
            storedLength = try sealer.seal(stored, context: Repository.blockContext(current!.id, offset: offset), into: sealedBlock)
            try stage(UnsafeRawBufferPointer(rebasing: sealedBlock[..<storedLength]))
        } else {
            try stage(stored)
        }
        current!.blockBytes += UInt64(storedLength)
        for chunk in chunks {
            current!.entries.append(PackEntry(digest: chunk.digest, offset: offset, storedLength: UInt32(storedLength),
                                              rawLength: chunk.rawLength, encoding: encoding, blockOffset: chunk.blockOffset))
        }
        if current!.size >= writer.packTargetSize || current!.entries.count >= PackFormat.maximumEntriesPerPack { try close() }
    }

    /// Stores the last block and closes the open pack. Call once the worker has no more chunks.
    public func finish() throws {
        try endBlock()
        if current != nil { try close() }
    }

    private func openPack() throws {
        let id = PackID.generate()
        let path = writer.area.path(id.hex + ".pack")
        let file = try OpenFile(path: path, mode: [.writeOnly, .create, .exclusive], permissions: 0o600)
        fill = 0
        current = OpenPack(id: id, writer: DirectWriter(file: file), size: 0)
        current!.entries.reserveCapacity(1024)
        try stage(PackFormat.encodeHeader(sealed: writer.repository.isEncrypted))
    }

    private func stage(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try stage($0) }
    }

    private func stage(_ bytes: UnsafeRawBufferPointer) throws {
        var rest = bytes
        while !rest.isEmpty {
            let n = min(rest.count, staging.count - fill)
            UnsafeMutableRawBufferPointer(rebasing: staging[fill..<fill + n]).copyMemory(from: UnsafeRawBufferPointer(rebasing: rest[..<n]))
            fill += n
            current!.size += UInt64(n)
            rest = UnsafeRawBufferPointer(rebasing: rest[n...])
            if fill == staging.count { try writeStaged() }
        }
    }

    /// Sends the full staging buffer to be written at its place while the worker fills the
    /// other one: the disk takes 4 MiB while the next 4 MiB are hashed and compressed (an
    /// `O_DIRECT` write holds its thread until the device has the data). Waits for the
    /// previous write first; its failure throws here.
    private func writeStaged() throws {
        try background.wait()
        let writer = current!.writer, offset = current!.stagedAt
        let full = SendableBytes(bytes: UnsafeRawBufferPointer(rebasing: staging[..<fill]))
        background.start { try writer.write(full.bytes, at: offset) }
        swap(&staging, &spare)
        current!.stagedAt += UInt64(fill)
        fill = 0
    }

    /// Writes the rest, the table of contents and the trailer, and fsyncs.
    private func close() throws {
        try background.wait()
        try current!.writer.write(UnsafeRawBufferPointer(rebasing: staging[..<fill]), at: current!.stagedAt)
        current!.stagedAt += UInt64(fill)
        fill = 0
        let pack = current!
        current = nil
        var toc = PackFormat.encodeTOC(pack.entries)
        if let sealer = writer.repository.sealer { toc = try sealer.seal(toc, context: Repository.tocContext(pack.id)) }
        let trailer = PackFormat.encodeTrailer(storedTOC: toc, entryCount: pack.entries.count, tocOffset: pack.size,
                                               sealed: writer.repository.isEncrypted)
        try pack.file.write(toc + trailer, at: pack.size)
        try pack.file.sync()
        try writer.closed(id: pack.id, entries: pack.entries, storedBytes: pack.blockBytes)
    }
}

/// Bytes another thread reads while their owner leaves them alone (the owner waits for it
/// before touching or freeing them).
private struct SendableBytes: @unchecked Sendable {
    let bytes: UnsafeRawBufferPointer
}

/// One write at a time on a thread of its own; `wait` returns when it is done, throwing
/// its failure.
private final class BackgroundWrite: Sendable {
    private let queue = DispatchQueue(label: "disksnap.pack-write")
    private let group = DispatchGroup()
    private let failure = Mutex<(any Error)?>(nil)

    func start(_ write: @escaping @Sendable () throws -> Void) {
        queue.async(group: group) { [self] in
            do { try write() } catch { failure.withLock { $0 = $0 ?? error } }
        }
    }

    func wait() throws {
        group.wait()
        if let error = failure.withLock({ $0 }) { throw error }
    }

    /// Waits, forgetting any failure: for a builder that is being abandoned.
    func drain() { group.wait() }
}

/// A writer's packs going up to a bucket as they close, at most `limit` at once: a worker
/// that closes a pack while `limit` are in flight waits for one to end (the work area never
/// holds more than that many closed packs). `wait` returns when all are stored, or throws
/// the first failure.
final class PackUploads: @unchecked Sendable {
    private let repository: Repository
    private let area: TemporaryArea
    private let group = DispatchGroup()
    private let slots: DispatchSemaphore
    private let queue = DispatchQueue(label: "disksnap.pack-uploads", attributes: .concurrent)
    private let failure = Mutex<(any Error)?>(nil)

    init(repository: Repository, area: TemporaryArea, limit: Int = 2) {
        self.repository = repository
        self.area = area
        slots = DispatchSemaphore(value: limit)
    }

    func start(_ id: PackID) {
        slots.wait()
        group.enter()
        queue.async { [self] in
            defer {
                slots.signal()
                group.leave()
            }
            guard failure.withLock({ $0 == nil }) else { return }
            do {
                try repository.publishPacks([id], from: area)
            } catch {
                failure.withLock { if $0 == nil { $0 = error } }
            }
        }
    }

    func wait() throws {
        group.wait()
        if let error = failure.withLock({ $0 }) { throw error }
    }
}
