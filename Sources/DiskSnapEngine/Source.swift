import DiskSnapSys
import DiskSnapFormat
import DiskSnapQcow2
import DiskSnapQemu
import Synchronization

/// How a source file is read: its bytes, or a qcow2 image's guest disk.
public enum SourceFormat: String, Sendable, CaseIterable {
    case raw, qcow2
}

/// A disk being read: a regular file (raw image or qcow2 image) or a block device.
struct Source {
    let path: String
    let file: OpenFile
    let kind: SourceKind
    /// The guest disk's size (a qcow2 image's virtual size).
    let size: UInt64
    let statusBefore: FileStatus
    /// Byte ranges that may hold data; the rest is holes and is never read. Nil through a
    /// view with change tracking: an incremental reads the changed ranges alone, and
    /// `allDataRanges()` asks QEMU for these only if it falls back to a full read.
    let dataRanges: [ByteRange]?
    /// Set for a qcow2 image: reads go through its L1/L2 tables and backing chain.
    var qcow2: Qcow2Image? = nil
    /// Set for a running QEMU's disk: reads go to its point-in-time view over NBD, and
    /// `file` (the image QEMU writes) only names it.
    var view: NBDReaders? = nil
    /// For an incremental through change tracking: the ranges changed since the previous
    /// snapshot, in order.
    var changedRanges: [ByteRange]? = nil

    /// `dataRanges`, asked of the view's `base:allocation` when they were left unasked.
    func allDataRanges() throws -> [ByteRange] {
        if let dataRanges { return dataRanges }
        let client = try view!.checkOut(for: NBDClient.allocationContext)
        defer { view!.checkIn(client) }
        return try Self.allocated(client)
    }

    /// The extents of the export that may hold data (zero extents need no read).
    private static func allocated(_ client: NBDClient) throws -> [ByteRange] {
        try client.extents(context: NBDClient.allocationContext, offset: 0, length: client.size)
            .filter { $0.flags & NBDClient.stateZero == 0 }.map { ByteRange(start: $0.offset, end: $0.end) }
    }

    /// Reads disk bytes (guest bytes for a qcow2 image).
    func readExactly(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        if let view {
            try view.read(into: buffer, at: offset)
        } else if let qcow2 {
            try qcow2.read(into: buffer, at: offset)
        } else {
            try file.readExactly(into: buffer, at: offset)
        }
    }

    /// Opens a source; `format` nil detects qcow2 by its header.
    static func open(_ path: String, format: SourceFormat?, allowBacking: Bool = true) throws -> Source {
        guard let status = try FileSystem.statusIfExists(path) else { throw EngineError.sourceNotFound(path) }
        if status.isRegularFile || status.isBlockDevice, format == .qcow2 || (format == nil && Qcow2Image.isQcow2(path)) {
            let image = try Qcow2Image(path: path, allowBacking: allowBacking)
            return Source(path: path, file: image.file, kind: .file, size: image.virtualSize, statusBefore: status,
                          dataRanges: try image.dataRanges(), qcow2: image)
        }
        return try open(path)
    }

    static func open(_ path: String) throws -> Source {
        guard let status = try FileSystem.statusIfExists(path) else { throw EngineError.sourceNotFound(path) }
        if status.isBlockDevice {
            // O_DIRECT: a snapshot read passes once; it must not flush the page cache.
            let file = try (try? OpenFile(path: path, mode: .direct)) ?? OpenFile(path: path)
            let size = try BlockDevice.size(file)
            return Source(path: path, file: file, kind: .blockDevice, size: size, statusBefore: status,
                          dataRanges: size > 0 ? [ByteRange(start: 0, end: size)] : [])
        }
        guard status.isRegularFile else {
            throw EngineError.sourceUnsupported("source \(path) is neither a regular file nor a block device")
        }
        let file = try OpenFile(path: path)
        file.adviseSequential()
        let ranges = try Extents.dataRanges(of: file, size: status.size)
        return Source(path: path, file: file, kind: .file, size: status.size, statusBefore: status, dataRanges: ranges)
    }

    /// A running QEMU's disk through its point-in-time view: data ranges from the view's
    /// `base:allocation`, and with change tracking the extents its dirty bitmap marks.
    static func open(view: any LiveDiskView, path: String) throws -> Source {
        let first = try NBDClient(socketPath: view.socketPath, exportName: view.exportName,
                                  metaContexts: [NBDClient.allocationContext] + (view.dirtyContext.map { [$0] } ?? []))
        var changed: [ByteRange]?
        if let context = view.dirtyContext {
            guard first.supports(context) else {
                throw EngineError(code: "Qemu.CommandFailed", "the NBD export of \(path) offers no \(context) context", exitStatus: .ioError)
            }
            changed = try first.extents(context: context, offset: 0, length: first.size)
                .filter { $0.flags & NBDClient.stateDirty != 0 }.map { ByteRange(start: $0.offset, end: $0.end) }
        }
        // An incremental's allocation would be thousands of extents QEMU works out through
        // the overlay and the image's tables (2 ms of 6,400 here): asked only if needed.
        let data = changed == nil ? try allocated(first) : nil
        let file = try OpenFile(path: path)
        var source = Source(path: path, file: file, kind: .file, size: first.size, statusBefore: try file.status(),
                            dataRanges: data)
        source.view = NBDReaders(seed: first)
        source.changedRanges = changed
        return source
    }

    /// Mounts that make a point-in-time read impossible: the device mounted read-write.
    func writableMounts() -> [Mounts.Mount] {
        guard kind == .blockDevice else { return [] }
        return Mounts.mounts(ofDevice: statusBefore.representedDevice).filter(\.readWrite)
    }

    /// Why the source is not the same file as when it was opened, or nil.
    func changeSinceOpen() throws -> String? {
        guard kind == .file, view == nil else { return nil }
        let now = try file.status()
        if now.size != statusBefore.size { return "its size changed from \(statusBefore.size) to \(now.size) bytes" }
        if now.modificationTime != statusBefore.modificationTime { return "it was modified (mtime changed)" }
        if now.changeTime != statusBefore.changeTime { return "its inode changed (ctime changed)" }
        return nil
    }
}

/// Consecutive chunks `[first, end)` read and processed as one unit of work.
struct ChunkRun: Sendable {
    var first: UInt64
    var end: UInt64
}

enum WorkPlan {
    /// Chunks in the longest run: what one worker's read buffer must hold.
    static func maxChunks(_ runs: [ChunkRun]) -> Int { max(1, runs.map { Int($0.end - $0.first) }.max() ?? 1) }

    /// A worker's read buffer for the longest run, 4096-aligned (O_DIRECT needs it).
    static func allocateRunBuffer(_ runs: [ChunkRun], chunkSize: UInt64) -> UnsafeMutableRawBufferPointer {
        .allocate(byteCount: maxChunks(runs) * Int(chunkSize), alignment: 4096)
    }

    /// The chunks that touch `ranges`, cut into runs of at most `maxChunks`. Chunks outside
    /// every run lie wholly in holes: they are zero entries without being read.
    static func runs(dataRanges ranges: [ByteRange], chunkSize: UInt64, maxChunks: UInt64) -> [ChunkRun] {
        var merged: [ChunkRun] = []
        for range in ranges where range.count > 0 {
            let first = range.start / chunkSize, end = (range.end + chunkSize - 1) / chunkSize
            if let last = merged.last, first <= last.end {
                merged[merged.count - 1].end = max(last.end, end)
            } else {
                merged.append(ChunkRun(first: first, end: end))
            }
        }
        var runs: [ChunkRun] = []
        for run in merged {
            var first = run.first
            while first < run.end {
                let end = min(run.end, first + maxChunks)
                runs.append(ChunkRun(first: first, end: end))
                first = end
            }
        }
        return runs
    }
}

/// One worker's reads of a source. Over NBD, `start` sends a read and returns; `wait`
/// returns once the oldest read sent is in its buffer. Several reads are in flight while
/// the worker hashes and compresses the run before them, hiding the server's latency (a
/// sparse incremental's runs are a chunk each: one read at a time would wait a round trip
/// per chunk). A file is read in `start` (the kernel's readahead already runs ahead of it).
final class SourceReader {
    private let source: Source
    private let client: NBDClient?
    /// Sent and not yet waited for, oldest first.
    private var pending: [(read: NBDClient.PendingRead, offset: UInt64)] = []
    private var closed = false

    init(_ source: Source) throws {
        self.source = source
        client = try source.view?.checkOut()
    }

    /// Whether `start` returns before the read is done (more buffers are worth having).
    var readsAhead: Bool { client != nil }

    /// Waits out the reads still in flight and hands the connection back.
    func close() {
        guard let client, !closed else { return }
        closed = true
        for read in pending { client.drain(read.read) }
        pending = []
        source.view?.checkIn(client)
    }

    /// Starts filling `buffer` from `offset` (a file: fills it).
    func start(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        if let client {
            pending.append((try client.startRead(into: buffer, at: offset), offset))
        } else {
            try read(into: buffer, at: offset)
        }
    }

    /// Waits for the oldest read `start` sent (nothing to wait for with a file).
    func wait() throws {
        guard let client, !pending.isEmpty else { return }
        let (read, offset) = pending.removeFirst()
        do {
            try client.finish(read)
        } catch {
            throw ContextError(underlying: error, context: "reading \(source.path) at offset \(offset)")
        }
    }

    private func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        do {
            try source.readExactly(into: buffer, at: offset)
        } catch let error as any CodedError {
            throw ContextError(underlying: error, context: "reading \(source.path) at offset \(offset)")
        }
    }
}

/// NBD connections to one export, one per reader at a time (libnbd serializes calls on a
/// connection): a reader takes an idle one or opens another.
final class NBDReaders: Sendable {
    let socketPath: String
    let exportName: String
    private let idle: Mutex<[NBDClient]>

    /// `seed`: a connection already open to the export.
    init(seed: NBDClient) {
        socketPath = seed.socketPath
        exportName = seed.exportName
        idle = Mutex([seed])
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        let client = try checkOut()
        defer { checkIn(client) }
        TestHooks.pause(at: "view-read")
        try client.read(into: buffer, at: offset)
    }

    /// A connection for one reader alone until `checkIn`; with `context`, one that
    /// negotiated that metadata context (block status needs it; reads need none). The
    /// seed has the contexts, but another reader may hold it: a new connection asks for
    /// `context` itself.
    func checkOut(for context: String? = nil) throws -> NBDClient {
        let taken = idle.withLock { pool -> NBDClient? in
            guard let context else { return pool.popLast() }
            return pool.lastIndex { $0.supports(context) }.map { pool.remove(at: $0) }
        }
        return try taken ?? NBDClient(socketPath: socketPath, exportName: exportName, metaContexts: context.map { [$0] } ?? [])
    }

    func checkIn(_ client: NBDClient) { idle.withLock { $0.append(client) } }

    /// Closes every idle connection (all of them once the readers are done): the view can
    /// be torn down then.
    func close() { idle.withLock { $0.removeAll() } }
}
