import Foundation
import Synchronization
import DiskSnapSys
import DiskSnapFormat
import DiskSnapEngine

/// Serves a snapshot read-only over the NBD protocol (NetworkBlockDevice/nbd doc/proto.md):
/// the fixed newstyle handshake with `NBD_OPT_GO`/`NBD_OPT_INFO` (and the older
/// `NBD_OPT_EXPORT_NAME`), structured replies and the `base:allocation` metadata context
/// when the client asks (`NBD_CMD_BLOCK_STATUS` reports zero chunks as holes, so clients
/// skip them), simple replies otherwise. Writes, trims and write-zeroes are refused with
/// `EPERM`.
///
/// One thread per connection; connections share the image (whose readers verify every
/// chunk). A client that breaks the protocol loses its connection, with the reason logged;
/// the server goes on.
public final class NBDServer: Sendable {
    /// Largest read served in one request, advertised as the maximum block size.
    public static let maxPayload = 32 << 20
    public static let maxConnections = 64
    /// Largest option payload read during the handshake (names are at most 4 KiB).
    static let maxOptionLength = 16 << 10

    let image: SnapshotImage
    /// Names a client may ask for: "" (the default export), the snapshot's id and name.
    let names: Set<String>
    let log: @Sendable (String) -> Void
    private let active = Atomic<Int>(0)
    private let served = Atomic<Int>(0)

    public init(image: SnapshotImage, log: @escaping @Sendable (String) -> Void) {
        self.image = image
        names = ["", image.record.snapshotId.rawValue, image.record.snapshotName]
        self.log = log
    }

    /// Accepts connections until the listener fails or is shut down.
    public func serve(_ listener: Socket) throws {
        while true {
            let connection = try listener.accept()
            let number = served.wrappingAdd(1, ordering: .relaxed).newValue
            guard active.wrappingAdd(1, ordering: .relaxed).newValue <= Self.maxConnections else {
                active.wrappingSubtract(1, ordering: .relaxed)
                log("connection \(number): refused, \(Self.maxConnections) clients are connected already")
                continue
            }
            let thread = Thread { [self] in
                handle(connection, number: number)
                active.wrappingSubtract(1, ordering: .relaxed)
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    func handle(_ socket: Socket, number: Int) {
        do {
            var session = NBDSession(server: self, socket: socket)
            if try session.negotiate() {
                try session.transmit()
            }
        } catch let error as NBDProtocolError {
            log("connection \(number): closed: \(error.reason)")
        } catch let error as any CodedError {
            log("connection \(number): closed: \(error.code): \(error.message)")
        } catch {
            log("connection \(number): closed: \(error)")
        }
        socket.shutdown()
    }
}

/// A client broke the protocol: its connection ends with this reason.
struct NBDProtocolError: Error {
    let reason: String
}

/// The numbers of the protocol.
enum NBD {
    static let magic: UInt64 = 0x4e42_444d_4147_4943  // "NBDMAGIC"
    static let optionMagic: UInt64 = 0x4948_4156_454f_5054  // "IHAVEOPT"
    static let replyMagic: UInt64 = 0x0003_e889_0455_65a9
    static let requestMagic: UInt32 = 0x2560_9513
    static let simpleReplyMagic: UInt32 = 0x6744_6698

    static let flagFixedNewstyle: UInt16 = 1 << 0
    static let flagNoZeroes: UInt16 = 1 << 1

    static let transmissionHasFlags: UInt16 = 1 << 0
    static let transmissionReadOnly: UInt16 = 1 << 1
    static let transmissionCanMultiConn: UInt16 = 1 << 8

    enum Option: UInt32 {
        case exportName = 1, abort = 2, list = 3, startTLS = 5, info = 6, go = 7, structuredReply = 8
        case listMetaContext = 9, setMetaContext = 10
    }

    static let structuredReplyMagic: UInt32 = 0x668e_33ef
    static let replyFlagDone: UInt16 = 1
    static let replyTypeOffsetData: UInt16 = 1
    static let replyTypeBlockStatus: UInt16 = 5
    static let replyTypeError: UInt16 = 0x8001
    static let replyMetaContext: UInt32 = 4
    static let commandFlagReqOne: UInt16 = 1 << 3
    /// The one metadata context served: which ranges are zero chunks (`base:allocation`).
    static let allocationContext = "base:allocation"
    static let allocationContextID: UInt32 = 1
    static let stateHoleZero: UInt32 = 3

    static let replyAck: UInt32 = 1
    static let replyServer: UInt32 = 2
    static let replyInfo: UInt32 = 3
    static let errorUnsupported: UInt32 = 0x8000_0001
    static let errorInvalid: UInt32 = 0x8000_0003
    static let errorUnknown: UInt32 = 0x8000_0006

    static let infoExport: UInt16 = 0
    static let infoName: UInt16 = 1
    static let infoDescription: UInt16 = 2
    static let infoBlockSize: UInt16 = 3

    enum Command: UInt16 {
        case read = 0, write = 1, disconnect = 2, flush = 3, trim = 4, cache = 5, writeZeroes = 6, blockStatus = 7
    }

    static let EPERM: UInt32 = 1
    static let EIO: UInt32 = 5
    static let EINVAL: UInt32 = 22
}

/// Big-endian fields out of a received message, bounds-checked.
struct WireReader {
    let bytes: [UInt8]
    var at = 0

    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, at + n <= bytes.count else { throw NBDProtocolError(reason: "message is \(bytes.count) bytes, too short for its fields") }
        defer { at += n }
        return bytes[at..<at + n]
    }

    mutating func u16() throws -> UInt16 { try take(2).reduce(0) { $0 << 8 | UInt16($1) } }
    mutating func u32() throws -> UInt32 { try take(4).reduce(0) { $0 << 8 | UInt32($1) } }
    mutating func u64() throws -> UInt64 { try take(8).reduce(0) { $0 << 8 | UInt64($1) } }
    var remaining: Int { bytes.count - at }
}

extension Array where Element == UInt8 {
    mutating func put(_ value: UInt16) { append(contentsOf: [UInt8(value >> 8), UInt8(value & 0xff)]) }
    mutating func put(_ value: UInt32) { for shift in stride(from: 24, through: 0, by: -8) { append(UInt8((value >> UInt32(shift)) & 0xff)) } }
    mutating func put(_ value: UInt64) { for shift in stride(from: 56, through: 0, by: -8) { append(UInt8((value >> UInt64(shift)) & 0xff)) } }
}

/// One client connection: the handshake, then the transmission phase.
struct NBDSession {
    let server: NBDServer
    let socket: Socket
    var noZeroes = false
    /// NBD_OPT_STRUCTURED_REPLY was negotiated: reads answer with structured chunks.
    var structured = false
    /// `base:allocation` was selected: NBD_CMD_BLOCK_STATUS reports zero chunks as holes.
    var allocationSelected = false

    init(server: NBDServer, socket: Socket) {
        self.server = server
        self.socket = socket
    }

    var transmissionFlags: UInt16 { NBD.transmissionHasFlags | NBD.transmissionReadOnly | NBD.transmissionCanMultiConn }

    /// The handshake. Returns true when the client moved to transmission, false when it
    /// ended the session politely.
    mutating func negotiate() throws -> Bool {
        var hello: [UInt8] = []
        hello.put(NBD.magic)
        hello.put(NBD.optionMagic)
        hello.put(NBD.flagFixedNewstyle | NBD.flagNoZeroes)
        try socket.write(hello)
        var flags = WireReader(bytes: try socket.readBytes(4))
        let clientFlags = try flags.u32()
        guard clientFlags & ~UInt32(3) == 0 else { throw NBDProtocolError(reason: "unknown client flags 0x\(String(clientFlags, radix: 16))") }
        noZeroes = clientFlags & 2 != 0

        while true {
            var header = WireReader(bytes: try socket.readBytes(16))
            let magic = try header.u64()
            guard magic == NBD.optionMagic else { throw NBDProtocolError(reason: "option without IHAVEOPT magic (0x\(String(magic, radix: 16)))") }
            let option = try header.u32(), length = Int(try header.u32())
            guard length <= NBDServer.maxOptionLength else { throw NBDProtocolError(reason: "option \(option) carries \(length) bytes (at most \(NBDServer.maxOptionLength))") }
            var data = WireReader(bytes: try socket.readBytes(length))
            switch NBD.Option(rawValue: option) {
            case .exportName:
                let name = String(decoding: try data.take(length), as: UTF8.self)
                guard server.names.contains(name) else { throw NBDProtocolError(reason: "unknown export '\(name)'") }
                var reply: [UInt8] = []
                reply.put(server.image.size)
                reply.put(transmissionFlags)
                if !noZeroes { reply += [UInt8](repeating: 0, count: 124) }
                try socket.write(reply)
                return true
            case .abort:
                try reply(option, NBD.replyAck)
                return false
            case .list:
                guard length == 0 else {
                    try reply(option, NBD.errorInvalid, message: "NBD_OPT_LIST takes no data")
                    continue
                }
                let name = Array(server.image.record.snapshotId.rawValue.utf8)
                var body: [UInt8] = []
                body.put(UInt32(name.count))
                try reply(option, NBD.replyServer, body + name)
                try reply(option, NBD.replyAck)
            case .info, .go:
                let nameLength = Int(try data.u32())
                guard nameLength <= data.remaining else {
                    try reply(option, NBD.errorInvalid, message: "export name length \(nameLength) passes the option's end")
                    continue
                }
                let name = String(decoding: try data.take(nameLength), as: UTF8.self)
                guard data.remaining >= 2 else {
                    try reply(option, NBD.errorInvalid, message: "no information request count")
                    continue
                }
                let count = Int(try data.u16())
                guard data.remaining == 2 * count else {
                    try reply(option, NBD.errorInvalid, message: "\(count) information requests do not fill the option")
                    continue
                }
                let requested = try (0..<count).map { _ in try data.u16() }
                guard server.names.contains(name) else {
                    try reply(option, NBD.errorUnknown, message: "no export named '\(name)'")
                    continue
                }
                try sendInfo(option, requested: requested)
                try reply(option, NBD.replyAck)
                if option == NBD.Option.go.rawValue { return true }
            case .startTLS:
                try reply(option, NBD.errorUnsupported, message: "TLS is not offered; use a Unix socket or loopback")
            case .structuredReply:
                guard length == 0 else {
                    try reply(option, NBD.errorInvalid, message: "NBD_OPT_STRUCTURED_REPLY takes no data")
                    continue
                }
                structured = true
                try reply(option, NBD.replyAck)
            case .listMetaContext, .setMetaContext:
                let set = option == NBD.Option.setMetaContext.rawValue
                if set { allocationSelected = false }  // a SET replaces the selection, even when it fails
                guard let (name, queries) = try? Self.metaContextRequest(&data) else {
                    try reply(option, NBD.errorInvalid, message: "lengths in the meta context request do not fit the option")
                    continue
                }
                guard !set || structured else {
                    try reply(option, NBD.errorInvalid, message: "NBD_OPT_SET_META_CONTEXT needs structured replies first")
                    continue
                }
                guard server.names.contains(name) else {
                    try reply(option, NBD.errorUnknown, message: "no export named '\(name)'")
                    continue
                }
                let matches = queries.isEmpty ? !set : queries.contains { $0 == NBD.allocationContext || (!set && $0 == "base:") }
                if matches {
                    var body: [UInt8] = []
                    body.put(set ? NBD.allocationContextID : 0)
                    try reply(option, NBD.replyMetaContext, body + Array(NBD.allocationContext.utf8))
                    if set { allocationSelected = true }
                }
                try reply(option, NBD.replyAck)
            case .none:
                try reply(option, NBD.errorUnsupported, message: "option \(option) is not supported")
            }
        }
    }

    /// Export name and queries of NBD_OPT_LIST/SET_META_CONTEXT; throws when a length does
    /// not fit the option.
    static func metaContextRequest(_ data: inout WireReader) throws -> (String, [String]) {
        let name = String(decoding: try data.take(Int(try data.u32())), as: UTF8.self)
        let count = Int(try data.u32())
        guard count <= data.remaining / 4 else { throw NBDProtocolError(reason: "\(count) queries do not fit") }
        var queries: [String] = []
        for _ in 0..<count { queries.append(String(decoding: try data.take(Int(try data.u32())), as: UTF8.self)) }
        guard data.remaining == 0 else { throw NBDProtocolError(reason: "bytes after the queries") }
        return (name, queries)
    }

    private func sendInfo(_ option: UInt32, requested: [UInt16]) throws {
        var export: [UInt8] = []
        export.put(NBD.infoExport)
        export.put(server.image.size)
        export.put(transmissionFlags)
        try reply(option, NBD.replyInfo, export)
        if requested.contains(NBD.infoName) {
            var body: [UInt8] = []
            body.put(NBD.infoName)
            try reply(option, NBD.replyInfo, body + Array(server.image.record.snapshotId.rawValue.utf8))
        }
        if requested.contains(NBD.infoDescription) {
            var body: [UInt8] = []
            body.put(NBD.infoDescription)
            let text = "disksnap snapshot \(server.image.record.snapshotName) of \(server.image.record.sourcePath)"
            try reply(option, NBD.replyInfo, body + Array(text.utf8.prefix(4096)))
        }
        if requested.contains(NBD.infoBlockSize) {
            var body: [UInt8] = []
            body.put(NBD.infoBlockSize)
            body.put(UInt32(1))
            body.put(UInt32(4096))
            body.put(UInt32(NBDServer.maxPayload))
            try reply(option, NBD.replyInfo, body)
        }
    }

    private func reply(_ option: UInt32, _ type: UInt32, _ body: [UInt8] = [], message: String? = nil) throws {
        let payload = message.map { Array($0.utf8) } ?? body
        var bytes: [UInt8] = []
        bytes.put(NBD.replyMagic)
        bytes.put(option)
        bytes.put(type)
        bytes.put(UInt32(payload.count))
        try socket.write(bytes + payload)
    }

    /// A structured reply chunk's header, always the last chunk of its reply.
    func chunkHeader(_ type: UInt16, cookie: UInt64, length: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.put(NBD.structuredReplyMagic)
        bytes.put(NBD.replyFlagDone)
        bytes.put(type)
        bytes.put(cookie)
        bytes.put(UInt32(length))
        return bytes
    }

    /// Requests until the client disconnects.
    func transmit() throws {
        let headerBytes = 16
        var buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: headerBytes + (1 << 20), alignment: 64)
        defer { buffer.deallocate() }
        let request = UnsafeMutableRawBufferPointer.allocate(byteCount: 28, alignment: 8)
        defer { request.deallocate() }
        while true {
            guard try socket.read(into: request) else { return }  // the client hung up between requests
            var fields = WireReader(bytes: Array(request))
            let magic = try fields.u32()
            guard magic == NBD.requestMagic else { throw NBDProtocolError(reason: "request without its magic (0x\(String(magic, radix: 16)))") }
            let flags = try fields.u16()
            let type = try fields.u16(), cookie = try fields.u64(), offset = try fields.u64(), length = Int(try fields.u32())

            func header(_ error: UInt32) {
                var bytes: [UInt8] = []
                bytes.put(NBD.simpleReplyMagic)
                bytes.put(error)
                bytes.put(cookie)
                buffer.copyBytes(from: bytes)
            }
            func fail(_ error: UInt32) throws {
                if structured && error != 0 {
                    // An error chunk (also the only correct answer to a read once structured).
                    var payload: [UInt8] = []
                    payload.put(error)
                    payload.put(UInt16(0))
                    try socket.write(chunkHeader(NBD.replyTypeError, cookie: cookie, length: payload.count) + payload)
                    return
                }
                header(error)
                try socket.write(UnsafeRawBufferPointer(rebasing: buffer[..<headerBytes]))
            }
            switch NBD.Command(rawValue: type) {
            case .read:
                let size = server.image.size
                guard length <= NBDServer.maxPayload, offset <= size, UInt64(length) <= size - offset else {
                    try fail(NBD.EINVAL)
                    continue
                }
                if buffer.count < headerBytes + length {
                    buffer.deallocate()
                    buffer = .allocate(byteCount: headerBytes + length, alignment: 64)
                }
                do {
                    try server.image.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[headerBytes..<headerBytes + length]), at: offset)
                } catch let error as any CodedError {
                    server.log("read of \(length) bytes at \(offset) failed: \(error.code): \(error.message)")
                    try fail(NBD.EIO)
                    continue
                }
                if structured {
                    // One OFFSET_DATA chunk: its 20-byte header and 8-byte offset replace the
                    // simple reply's 16 bytes in front of the data.
                    var prefix = chunkHeader(NBD.replyTypeOffsetData, cookie: cookie, length: 8 + length)
                    prefix.put(offset)
                    try socket.write(prefix)
                    try socket.write(UnsafeRawBufferPointer(rebasing: buffer[headerBytes..<(headerBytes + length)]))
                } else {
                    header(0)
                    try socket.write(UnsafeRawBufferPointer(rebasing: buffer[..<(headerBytes + length)]))
                }
            case .write:
                // The payload follows the request: read it off the stream, then refuse.
                var left = length
                while left > 0 {
                    let n = min(left, buffer.count)
                    guard try socket.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<n])) else {
                        throw NBDProtocolError(reason: "stream ended inside a write's payload")
                    }
                    left -= n
                }
                try fail(NBD.EPERM)
            case .trim, .writeZeroes:
                try fail(NBD.EPERM)
            case .disconnect:
                return
            case .flush, .cache:
                try fail(0)  // nothing to flush; everything is read on demand
            case .blockStatus:
                let size = server.image.size
                guard structured, allocationSelected, length > 0, offset < size else {
                    try fail(NBD.EINVAL)
                    continue
                }
                var extents = try server.image.zeroExtents(offset: offset, length: UInt64(min(UInt64(length), size - offset)))
                if flags & NBD.commandFlagReqOne != 0 { extents = Array(extents.prefix(1)) }
                var payload: [UInt8] = []
                payload.put(NBD.allocationContextID)
                for extent in extents.prefix(4096) {
                    payload.put(UInt32(extent.length))
                    payload.put(extent.zero ? NBD.stateHoleZero : 0)
                }
                try socket.write(chunkHeader(NBD.replyTypeBlockStatus, cookie: cookie, length: payload.count) + payload)
            case .none:
                try fail(NBD.EINVAL)
            }
        }
    }
}
