import CNBDGlue
#if canImport(Glibc)
import Glibc
#endif

/// A failed NBD call, with libnbd's message.
public struct NBDError: CodedError {
    public let operation: String
    public let detail: String
    public let errno: Int32

    public var code: String { "Source.ReadFailed" }
    public var message: String { "NBD \(operation): \(detail)" }
    public var exitStatus: ExitStatus { .ioError }

    static func last(_ operation: String) -> NBDError {
        NBDError(operation: operation, detail: ds_nbd_get_error().map { String(cString: $0) } ?? "unknown error", errno: ds_nbd_get_errno())
    }
}

/// One extent of an NBD block-status reply: `[offset, offset + length)` has `flags`.
public struct NBDExtent: Sendable, Equatable {
    public var offset: UInt64
    public var length: UInt64
    public var flags: UInt32
    public init(offset: UInt64, length: UInt64, flags: UInt32) {
        self.offset = offset
        self.length = length
        self.flags = flags
    }
    public var end: UInt64 { offset + length }
}

/// A read-only NBD client connection through libnbd (docs/DESIGN.md, "Running VMs": why
/// libnbd and not a client of our own). libnbd serializes calls on one handle, so readers
/// that run in parallel each open their own connection.
public final class NBDClient: @unchecked Sendable {
    /// `base:allocation`: the holes and zeros of an export.
    public static let allocationContext = "base:allocation"
    public static let stateZero: UInt32 = 2
    /// In a `qemu:dirty-bitmap:` context: the range is dirty.
    public static let stateDirty: UInt32 = 1

    private let handle: OpaquePointer
    public let socketPath: String
    public let exportName: String
    /// The export's size in bytes.
    public let size: UInt64

    /// libnbd, loaded by the first connection (or `load()`), once.
    private static let loaded: Result<Void, NBDError> = {
        var reason = [CChar](repeating: 0, count: 256)
        guard ds_nbd_load(&reason, reason.count) == 0 else {
            return .failure(NBDError(operation: "load", detail: String(cString: reason), errno: ENOSYS))
        }
        return .success(())
    }()

    /// Loads libnbd now (it takes a few milliseconds): for a caller with time to spare
    /// before its first connection. A failure is thrown again by every connection.
    public static func load() throws(NBDError) { try loaded.get() }

    /// Connects to `exportName` on the Unix socket `socketPath`, asking for `metaContexts`.
    public init(socketPath: String, exportName: String, metaContexts: [String] = []) throws(NBDError) {
        try Self.load()
        guard let handle = ds_nbd_create() else { throw NBDError.last("create") }
        self.handle = handle
        self.socketPath = socketPath
        self.exportName = exportName
        for context in metaContexts where ds_nbd_add_meta_context(handle, context) != 0 {
            let error = NBDError.last("add_meta_context \(context)")
            ds_nbd_close(handle)
            throw error
        }
        guard ds_nbd_set_export_name(handle, exportName) == 0, ds_nbd_connect_unix(handle, socketPath) == 0 else {
            let error = NBDError.last("connect \(socketPath) export \(exportName)")
            ds_nbd_close(handle)
            throw error
        }
        let size = ds_nbd_get_size(handle)
        guard size >= 0 else {
            let error = NBDError.last("get_size")
            ds_nbd_close(handle)
            throw error
        }
        self.size = UInt64(size)
    }

    deinit {
        _ = ds_nbd_shutdown(handle, 0)
        ds_nbd_close(handle)
    }

    /// The largest read sent as one NBD command; a longer read goes as several, all in
    /// flight at once. The protocol allows 32 MiB, but QEMU allocates a buffer for each
    /// command and frees it after the reply: with 2 and 4 MiB commands, QEMU 7.2 here got
    /// fresh pages from the kernel for much of what it served (313,000 page faults for
    /// 1.2 GiB, every 4 KiB of it, in some runs), twice the CPU of 256 KiB commands, which
    /// never did. docs/PERFORMANCE.md, "NBD command size".
    public static let requestBytes = 256 << 10

    /// Whether the server agreed to `context` at connect time.
    public func supports(_ context: String) -> Bool { ds_nbd_can_meta_context(handle, context) == 1 }

    /// Fills `buffer` from `offset`; a short export or a server error throws.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(NBDError) {
        try finish(try startRead(into: buffer, at: offset))
    }

    /// A read sent with `startRead` and not yet waited for: the commands it was cut into.
    public struct PendingRead: Sendable {
        fileprivate var cookies: [Int64]
        fileprivate let offset: UInt64
        fileprivate let count: Int
        public var isEmpty: Bool { cookies.isEmpty }
    }

    /// Sends the read of `buffer` from `offset` and returns at once: `finish` waits for it.
    /// `buffer` must stay allocated until then. A pipeline sends its next read before it
    /// works on the current one, so the server's latency overlaps with that work.
    public func startRead(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(NBDError) -> PendingRead {
        let step = Self.requestBytes
        var pending = PendingRead(cookies: [], offset: offset, count: buffer.count)
        var done = 0
        while done < buffer.count {
            let count = min(step, buffer.count - done)
            let cookie = ds_nbd_aio_pread(handle, buffer.baseAddress! + done, count, offset + UInt64(done))
            guard cookie >= 0 else {
                let error = NBDError.last("pread \(count) bytes at \(offset + UInt64(done)) from \(socketPath)")
                drain(pending)
                throw error
            }
            pending.cookies.append(cookie)
            done += count
        }
        return pending
    }

    /// Waits until every command of `pending` is answered; the first failure throws, once
    /// all of them are retired (so no reply can land in a buffer freed after the throw).
    public func finish(_ pending: PendingRead) throws(NBDError) {
        var failure: NBDError?
        for cookie in pending.cookies {
            while true {
                let state = ds_nbd_aio_command_completed(handle, UInt64(cookie))
                if state == 1 { break }
                if state == -1 {
                    failure = failure ?? NBDError.last("pread \(pending.count) bytes at \(pending.offset) from \(socketPath)")
                    break
                }
                guard ds_nbd_poll(handle, -1) != -1 else {
                    // The connection is dead: no reply will come, and none can land.
                    throw failure ?? NBDError.last("pread \(pending.count) bytes at \(pending.offset) from \(socketPath)")
                }
            }
        }
        if let failure { throw failure }
    }

    /// Waits for `pending` and forgets its outcome: for a read that is being abandoned.
    public func drain(_ pending: PendingRead) {
        _ = try? finish(pending)
    }

    /// The extents of `context` over `[offset, offset + length)`, in order, covering it
    /// exactly (the last one clipped). The server may answer for less than asked: the
    /// request repeats from where its answer ended.
    public func extents(context: String, offset: UInt64, length: UInt64) throws(NBDError) -> [NBDExtent] {
        final class Collector {
            let context: String
            var extents: [NBDExtent] = []
            init(context: String) { self.context = context }
        }
        let collector = Collector(context: context)
        let end = offset + length
        var position = offset
        while position < end {
            let before = collector.extents.count
            var cursor = position
            let callback: ds_nbd_extent_function = { userData, name, start, entries, count, _ in
                let collector = Unmanaged<Collector>.fromOpaque(userData!).takeUnretainedValue()
                guard let name, String(cString: name) == collector.context, let entries else { return 0 }
                var at = start
                for i in stride(from: 0, to: count - 1, by: 2) {
                    let length = UInt64(entries[i])
                    collector.extents.append(NBDExtent(offset: at, length: length, flags: entries[i + 1]))
                    at += length
                }
                return 0
            }
            let ask = min(end - position, 1 << 31)
            let rc = withExtendedLifetime(collector) {
                ds_nbd_block_status(handle, ask, position, callback, Unmanaged.passUnretained(collector).toOpaque())
            }
            guard rc == 0 else { throw NBDError.last("block_status \(context) at \(position)") }
            for extent in collector.extents[before...] { cursor = max(cursor, extent.end) }
            guard cursor > position else {
                throw NBDError(operation: "block_status \(context) at \(position)", detail: "the server answered with no extent", errno: EIO)
            }
            position = cursor
        }
        // Clip the last extent to the range asked.
        while let last = collector.extents.last, last.offset >= end { collector.extents.removeLast() }
        if let last = collector.extents.last, last.end > end {
            collector.extents[collector.extents.count - 1].length = end - last.offset
        }
        return collector.extents
    }
}
