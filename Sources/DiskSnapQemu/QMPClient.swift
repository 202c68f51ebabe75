import Foundation
import DiskSnapSys

/// A JSON object as QMP sends it.
public typealias QMPObject = [String: Any]

/// A QEMU Machine Protocol connection (qemu `docs/interop/qmp-spec.txt`): a Unix stream
/// socket carrying one JSON object per line. The server greets with `{"QMP": {...}}`; after
/// `qmp_capabilities` each `{"execute", "arguments", "id"}` gets `{"return"}` or `{"error"}`
/// with the same id, and `{"event"}` objects may arrive between them at any time.
public final class QMPClient {
    public struct Version: Comparable, CustomStringConvertible, Sendable {
        public var major: Int, minor: Int, micro: Int
        public init(_ major: Int, _ minor: Int, _ micro: Int) { (self.major, self.minor, self.micro) = (major, minor, micro) }
        public static func < (a: Version, b: Version) -> Bool { (a.major, a.minor, a.micro) < (b.major, b.minor, b.micro) }
        public var description: String { "\(major).\(minor).\(micro)" }
    }

    public let socketPath: String
    public let version: Version
    /// The QEMU process at the other end (SO_PEERCRED), when the kernel tells.
    public let peerProcessID: Int32?
    private let socket: Socket
    private var buffer: [UInt8] = []
    private var nextID = 1
    /// Events received and not yet consumed by `waitForEvent`.
    public private(set) var events: [QMPObject] = []

    /// Connects, checks the greeting and leaves capabilities negotiation mode. `timeout`
    /// bounds every wait for an answer: a silent socket is not QMP, a hung QEMU is reported.
    /// `checkPeer` judges the process serving the socket (nil: its id is unknown) before
    /// anything is read or sent.
    public init(socketPath: String, timeout: Double = 60,
                checkPeer: (Int32?) throws(QemuError) -> Void = { _ in }) throws(QemuError) {
        self.socketPath = socketPath
        socket = try Self.connect(socketPath, what: "the QMP socket", startHint: "start QEMU with -qmp unix:\(socketPath),server=on,wait=off",
                                  failure: QemuError.unreachable)
        peerProcessID = socket.peerProcessID
        try checkPeer(peerProcessID)
        // A QMP server greets at once; a socket that stays silent is something else.
        socket.setReceiveTimeout(seconds: min(timeout, 5))
        let greeting: QMPObject
        do {
            greeting = try Self.readObject(socket: socket, buffer: &buffer, path: socketPath)
        } catch where error.code == "Qemu.Gone" {
            throw QemuError.notQMP("\(socketPath) did not greet as a QMP server (\(error.message)): it is not a QMP socket, or another client holds its one connection (give disksnap a monitor of its own: a second -qmp or --monitor)")
        }
        guard let qmp = greeting["QMP"] as? QMPObject, let qemu = (qmp["version"] as? QMPObject)?["qemu"] as? QMPObject,
              let major = qemu["major"] as? Int, let minor = qemu["minor"] as? Int, let micro = qemu["micro"] as? Int else {
            throw QemuError.notQMP("\(socketPath) answered, but not with a QMP greeting")
        }
        version = Version(major, minor, micro)
        socket.setReceiveTimeout(seconds: timeout)
        _ = try execute("qmp_capabilities")
    }

    /// Runs `command` and returns its `return` value; a QMP error throws
    /// `Qemu.CommandFailed` with QEMU's description.
    @discardableResult
    public func execute(_ command: String, _ arguments: QMPObject = [:]) throws(QemuError) -> Any {
        try executeAll([(command, arguments)])[0].get()
    }

    /// Sends `commands` in one write and waits for all their answers: one round trip where
    /// `execute` takes one per command (a few tenths of a millisecond each, spent waiting on
    /// QEMU's main loop). QEMU runs them one after the other, in order, as if sent one at a
    /// time, so a command that fails does not stop the ones after it: send together only
    /// commands that are right to run whatever the earlier ones answer. Each answer is the
    /// command's `return` value or its `Qemu.CommandFailed`; a lost connection throws.
    public func executeAll(_ commands: [(command: String, arguments: QMPObject)]) throws(QemuError) -> [Result<Any, QemuError>] {
        var ids: [String] = []
        var lines: [UInt8] = []
        for (command, arguments) in commands {
            let id = "disksnap-\(nextID)"
            nextID += 1
            ids.append(id)
            var message: QMPObject = ["execute": command, "id": id]
            if !arguments.isEmpty { message["arguments"] = arguments }
            do {
                lines += try JSONSerialization.data(withJSONObject: message) + [0x0A]
            } catch {
                throw QemuError("Qemu.CommandFailed", "\(command): its arguments are not JSON (\(error))", exitStatus: .internalError)
            }
        }
        do {
            try socket.write(lines)
        } catch {
            throw QemuError.gone("QEMU at \(socketPath) went away (\(error.message)) before \(commands.map(\.command).joined(separator: ", "))")
        }
        var answers = [Result<Any, QemuError>?](repeating: nil, count: commands.count)
        var waiting = commands.count
        while waiting > 0 {
            let reply = try Self.readObject(socket: socket, buffer: &buffer, path: socketPath)
            if reply["event"] != nil {
                events.append(reply)
                continue
            }
            // An answer to a command of an earlier call that gave up on it is dropped; one
            // without an id (QEMU could not parse a request) is the oldest one's.
            let replyID = reply["id"] as? String
            guard let i = replyID.map({ ids.firstIndex(of: $0) }) ?? answers.firstIndex(where: { $0 == nil }), answers[i] == nil else { continue }
            let command = commands[i].command
            if let error = reply["error"] as? QMPObject {
                answers[i] = .failure(.commandFailed(command, error["class"] as? String ?? "GenericError", error["desc"] as? String ?? "(no description)"))
            } else if let value = reply["return"] {
                answers[i] = .success(value)
            } else {
                throw QemuError.notQMP("\(socketPath) answered \(command) with neither return nor error")
            }
            waiting -= 1
        }
        return answers.map { $0! }
    }

    /// Waits up to `timeout` seconds for an event named `name` for which `matches` holds
    /// (those already received count), and removes it from `events`.
    public func waitForEvent(_ name: String, timeout: Double, matching matches: (QMPObject) -> Bool = { _ in true }) throws(QemuError) -> QMPObject {
        try waitForEvent([name], timeout: timeout, matching: matches)
    }

    /// Waits for an event with one of `names` (the first to come).
    public func waitForEvent(_ names: Set<String>, timeout: Double, matching matches: (QMPObject) -> Bool = { _ in true }) throws(QemuError) -> QMPObject {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let i = events.firstIndex(where: { names.contains($0["event"] as? String ?? "") && matches($0["data"] as? QMPObject ?? [:]) }) {
                return events.remove(at: i)
            }
            // QEMU sends events as they happen: wait on the socket, not on a timer.
            guard let object = try Self.readObject(socket: socket, buffer: &buffer, path: socketPath, deadline: deadline) else {
                throw QemuError.gone("QEMU at \(socketPath) sent no \(names.sorted().joined(separator: " or ")) event within \(Int(timeout)) s")
            }
            if object["event"] != nil { events.append(object) }  // a late reply to nothing we wait for is dropped
        }
    }

    /// Command names this QEMU accepts.
    public func commands() throws(QemuError) -> Set<String> {
        guard let list = try execute("query-commands") as? [QMPObject] else { throw QemuError.notQMP("query-commands answered with no list") }
        return Set(list.compactMap { $0["name"] as? String })
    }

    /// Connects to the Unix socket a QEMU serves at `path`; every failure is `failure`'s
    /// error, saying what was expected there.
    static func connect(_ path: String, what: String, startHint: String, failure: (String) -> QemuError) throws(QemuError) -> Socket {
        guard let status = try? FileSystem.statusIfExists(path) else { throw failure("\(what) \(path) does not exist") }
        guard status.mode & UInt32(S_IFMT) == UInt32(S_IFSOCK) else { throw failure("\(path) is not a socket (\(startHint))") }
        do {
            return try Socket.connect(unixPath: path)
        } catch {
            throw failure("cannot connect to \(what) \(path): \(error.message) (is QEMU running?)")
        }
    }

    private static func readObject(socket: Socket, buffer: inout [UInt8], path: String) throws(QemuError) -> QMPObject {
        // Without a deadline there is always an object or an error.
        try readObject(socket: socket, buffer: &buffer, path: path, deadline: nil)!
    }

    /// The next object QEMU sends; nil if none is complete by `deadline`.
    private static func readObject(socket: Socket, buffer: inout [UInt8], path: String, deadline: Date?) throws(QemuError) -> QMPObject? {
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let line = buffer[..<newline]
                buffer.removeSubrange(...newline)
                if line.allSatisfy({ $0 == 0x0D || $0 == 0x20 }) { continue }
                guard let object = (try? JSONSerialization.jsonObject(with: Data(line))) as? QMPObject else {
                    throw QemuError.notQMP("\(path) sent a line that is not a JSON object: \(String(decoding: line.prefix(80), as: UTF8.self))")
                }
                return object
            }
            guard buffer.count < 64 << 20 else { throw QemuError.notQMP("\(path) sent more than 64 MiB without a line break") }
            if let deadline {
                var poller = pollfd(fd: socket.descriptor, events: Int16(POLLIN), revents: 0)
                let wait = Int32(max(0, min(deadline.timeIntervalSinceNow * 1000, 60_000)).rounded(.up))
                let ready = poll(&poller, 1, wait)
                if ready == 0 { return nil }
                if ready < 0 && errno != EINTR { throw QemuError.gone("QEMU at \(path): poll failed (errno \(errno))") }
                if ready < 0 { continue }
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let count: Int
            do {
                count = try chunk.withUnsafeMutableBytes { raw in try socket.readSome(into: raw) }
            } catch {
                throw QemuError.gone("QEMU at \(path) stopped answering: \((error as? any CodedError)?.message ?? "\(error)")")
            }
            guard count > 0 else { throw QemuError.gone("QEMU at \(path) closed the connection (did it exit?)") }
            buffer += chunk[..<count]
        }
    }
}
