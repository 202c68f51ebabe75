import Foundation
import DiskSnapSys

/// A connection to the QEMU guest agent (qemu-ga) inside a VM, through the host end of its
/// virtio-serial channel (`-chardev socket,path=SOCKET,server=on,wait=off,id=qga0 -device
/// virtserialport,chardev=qga0,name=org.qemu.guest_agent.0`). The channel is a byte stream
/// with no greeting, shared by every client that ever used it: a previous client may have
/// left a half-sent command or unread answers. `guest-sync-delimited` resynchronises: a
/// 0xFF byte resets the agent's parser, and the answer to the sync comes after a 0xFF
/// sentinel, so everything before it is discarded (qemu `qga/qapi-schema.json`).
public final class GuestAgent {
    public let socketPath: String
    private let socket: Socket
    private var buffer: [UInt8] = []
    private var nextID = 1

    /// Connects and resynchronises. `timeout` bounds every answer: an agent that does not
    /// answer the sync in time is not running in the guest (or the guest is hung).
    public init(socketPath: String, timeout: Double = 10) throws(QemuError) {
        self.socketPath = socketPath
        socket = try QMPClient.connect(socketPath, what: "the guest agent socket",
                                       startHint: "give QEMU -chardev socket,path=\(socketPath),server=on,wait=off,id=qga0 -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                                       failure: QemuError.agentUnreachable)
        socket.setReceiveTimeout(seconds: timeout)
        let id = Int.random(in: 1...Int(Int32.max))
        do {
            try send([0xFF])
            try send(command: "guest-sync-delimited", arguments: ["id": id])
            try skipToSentinel()
            while true {
                let reply = try readObject()
                if let value = reply["return"] as? Int, value == id { break }
            }
        } catch {
            throw QemuError.agentUnreachable("the guest agent at \(socketPath) did not answer a sync within \(Int(timeout)) s (\(error.message)): is qemu-ga running in the guest, and is no other client holding the channel?")
        }
    }

    /// Runs `command` with the receive timeout `timeout`; its `return` value. An agent error
    /// throws `Qemu.CommandFailed` with the agent's description.
    @discardableResult
    public func execute(_ command: String, _ arguments: QMPObject = [:], timeout: Double? = nil) throws(QemuError) -> Any {
        if let timeout { socket.setReceiveTimeout(seconds: timeout) }
        let id = "disksnap-\(nextID)"
        nextID += 1
        try send(command: command, arguments: arguments, id: id)
        while true {
            let reply = try readObject()
            if let replyID = reply["id"] as? String, replyID != id { continue }
            if let error = reply["error"] as? QMPObject {
                throw QemuError.commandFailed("guest agent \(command)", error["class"] as? String ?? "GenericError", error["desc"] as? String ?? "(no description)")
            }
            guard let value = reply["return"] else { continue }
            return value
        }
    }

    /// Ends the connection now (the channel serves one client at a time).
    public func close() { socket.shutdown() }

    /// `thawed` or `frozen`.
    public func freezeStatus() throws(QemuError) -> String {
        guard let status = try execute("guest-fsfreeze-status") as? String else {
            throw QemuError.commandFailed("guest agent guest-fsfreeze-status", "GenericError", "answered with no status")
        }
        return status
    }

    private func send(command: String, arguments: QMPObject, id: String? = nil) throws(QemuError) {
        var message: QMPObject = ["execute": command]
        if !arguments.isEmpty { message["arguments"] = arguments }
        if let id { message["id"] = id }
        guard let data = try? JSONSerialization.data(withJSONObject: message) else {
            throw QemuError("Qemu.CommandFailed", "\(command): its arguments are not JSON", exitStatus: .internalError)
        }
        try send(Array(data) + [0x0A])
    }

    private func send(_ bytes: [UInt8]) throws(QemuError) {
        do {
            try socket.write(bytes)
        } catch {
            throw QemuError.agentGone("the guest agent channel \(socketPath) closed (\(error.message))")
        }
    }

    private func fill() throws(QemuError) {
        var chunk = [UInt8](repeating: 0, count: 4096)
        let count: Int
        do {
            count = try chunk.withUnsafeMutableBytes { raw in try socket.readSome(into: raw) }
        } catch {
            throw QemuError.agentGone("the guest agent at \(socketPath) stopped answering: \((error as? any CodedError)?.message ?? "\(error)")")
        }
        guard count > 0 else { throw QemuError.agentGone("the guest agent channel \(socketPath) closed (did the VM exit?)") }
        guard buffer.count < 16 << 20 else { throw QemuError.agentGone("the guest agent at \(socketPath) sent more than 16 MiB without a line break") }
        buffer += chunk[..<count]
    }

    private func skipToSentinel() throws(QemuError) {
        while true {
            if let sentinel = buffer.firstIndex(of: 0xFF) {
                buffer.removeSubrange(...sentinel)
                return
            }
            buffer.removeAll(keepingCapacity: true)
            try fill()
        }
    }

    private func readObject() throws(QemuError) -> QMPObject {
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let line = buffer[..<newline]
                buffer.removeSubrange(...newline)
                // Not JSON (a previous client's leftovers, a stray sentinel): skipped.
                if let object = (try? JSONSerialization.jsonObject(with: Data(line.filter { $0 != 0xFF }))) as? QMPObject { return object }
                continue
            }
            try fill()
        }
    }
}
