import Foundation
import DiskSnapSys

/// What a freeze did: how many filesystems the agent froze, and for how long the guest's
/// writes waited (from the freeze command to the thaw's answer, the flush included).
public struct FreezeOutcome: Sendable {
    public var filesystems: Int
    public var milliseconds: Int
    /// The watchdog, not this run, thawed the guest (this run's thaw failed).
    public var thawedByWatchdog = false
}

/// Freezes a guest's filesystems through its agent around one short step (the QMP
/// `transaction` that makes the point-in-time view), so the view holds what the guest's
/// applications and filesystems had flushed: application-consistent, not crash-consistent.
///
/// A frozen guest blocks every writer in it, so the freeze is bounded twice: this run's own
/// timeouts (the freeze must answer within `limit` seconds, then the step and the thaw
/// follow at once), and a watchdog process started before the freeze, in a session of its
/// own, that thaws the guest if this run ends without confirming the thaw (killed, crashed,
/// ^C) or is still holding it frozen `limit + watchdogGrace` seconds after the start (it
/// then kills this run first, as the guest's health comes before one snapshot).
/// What freezes the guest: its agent's socket (`--guest-agent`), or libvirt, which talks to
/// the agent of a domain it runs (`--domain`).
public enum FreezeTarget: Sendable, Equatable {
    case agent(socketPath: String)
    case libvirt(uri: String, domain: String)

    public var description: String {
        switch self {
        case .agent(let path): "the guest agent at \(path)"
        case .libvirt(let uri, let domain): "libvirt (\(uri)) through the guest agent of domain \(domain)"
        }
    }

    /// The watchdog command's options that name it.
    var watchdogOptions: [String] {
        switch self {
        case .agent(let path): ["--guest-agent", path]
        case .libvirt(let uri, let domain): ["--libvirt", uri, "--domain", domain]
        }
    }

    func connect(timeout: Double = 5) throws -> any FreezeChannel {
        switch self {
        case .agent(let path): try AgentFreezeChannel(socketPath: path, timeout: timeout)
        case .libvirt(let uri, let domain): try LibvirtFreezeChannel(uri: uri, domain: domain)
        }
    }
}

/// One connection to what freezes the guest.
protocol FreezeChannel: AnyObject {
    /// `thawed` or `frozen`; nil when it cannot be asked (libvirt has no such call).
    func status() throws -> String?
    /// Freezes every guest filesystem: how many. A guest already frozen by someone else
    /// throws `Guest.AlreadyFrozen`, and is then not thawed.
    func freeze(timeout: Double) throws -> Int
    /// Thaws; true when the guest is known thawed afterwards.
    func thaw() -> Bool
    func close()
}

final class AgentFreezeChannel: FreezeChannel {
    let agent: GuestAgent
    init(socketPath: String, timeout: Double) throws { agent = try GuestAgent(socketPath: socketPath, timeout: timeout) }
    func status() throws -> String? { try agent.freezeStatus() }
    func freeze(timeout: Double) throws -> Int {
        guard let count = try agent.execute("guest-fsfreeze-freeze", timeout: timeout) as? Int else {
            throw QemuError.commandFailed("guest agent guest-fsfreeze-freeze", "GenericError", "answered with no count")
        }
        return count
    }
    func thaw() -> Bool {
        guard let answer = try? agent.execute("guest-fsfreeze-thaw", timeout: 10), answer is Int else { return false }
        return (try? agent.freezeStatus()) == "thawed"
    }
    func close() { agent.close() }
}

/// libvirt's own agent connection: `virDomainFSFreeze` / `virDomainFSThaw` (libvirt bounds
/// the agent's answer itself; the watchdog bounds the whole freeze).
final class LibvirtFreezeChannel: FreezeChannel {
    let connection: LibvirtConnection
    let domain: LibvirtDomain
    init(uri: String, domain name: String) throws {
        do {
            connection = try LibvirtConnection(uri: uri)
            domain = try connection.domain(named: name)
        } catch {
            throw QemuError.agentUnreachable("libvirt at \(uri) cannot reach domain \(name): \(error.message)")
        }
    }
    func status() throws -> String? { nil }
    func freeze(timeout: Double) throws -> Int {
        do {
            return try domain.freezeFilesystems()
        } catch {
            // qemu-ga refuses every command but a few while frozen, guest-fsfreeze-freeze too.
            if error.message.contains("frozen state") {
                throw QemuError.alreadyFrozen("the guest's filesystems are frozen already (libvirt says: \(error.message)): disksnap thaws only what it froze itself; thaw them (virsh domfsthaw \(domain.name)) or snapshot without --freeze")
            }
            if error.number == LibvirtError.agentUnresponsive || error.message.contains("agent") && error.message.contains("not") {
                throw QemuError.agentUnreachable("domain \(domain.name) has no guest agent that answers libvirt: \(error.message) (a <channel type='unix'> with target name org.qemu.guest_agent.0, and qemu-ga running in the guest)")
            }
            throw QemuError.commandFailed("virDomainFSFreeze \(domain.name)", "libvirt error \(error.number)", error.message)
        }
    }
    func thaw() -> Bool { (try? domain.thawFilesystems()) != nil }
    func close() {}
}

public final class GuestFreezer: Sendable {
    public static let watchdogGrace = 10.0
    public let target: FreezeTarget
    public let limit: Double

    public init(target: FreezeTarget, limit: Double) {
        self.target = target
        self.limit = limit
    }

    public convenience init(socketPath: String, limit: Double) {
        self.init(target: .agent(socketPath: socketPath), limit: limit)
    }

    /// The arguments that start the watchdog (the hidden `guest-thaw-watchdog` command).
    public static func watchdogArguments(target: FreezeTarget, limit: Double, parent: Int32) -> [String] {
        ["guest-thaw-watchdog"] + target.watchdogOptions + ["--limit", String(limit), "--parent", String(parent)]
    }

    /// Runs `body` with the guest frozen and thaws it on every path. Throws with the guest
    /// thawed, or with `Guest.ThawFailed` when neither this run nor the watchdog could
    /// confirm that.
    public func whileFrozen(_ body: () throws -> Void) throws -> FreezeOutcome {
        let channel = try target.connect()
        if let status = try channel.status(), status != "thawed" {
            throw QemuError.alreadyFrozen("the guest's filesystems are \(status) already (\(target.description) says so): disksnap thaws only what it froze itself; thaw them (guest-fsfreeze-thaw) or snapshot without --freeze")
        }
        let watchdog: DetachedChild
        do {
            watchdog = try DetachedChild(arguments: Self.watchdogArguments(target: target, limit: limit, parent: getpid()))
        } catch {
            throw QemuError.watchdogFailed("cannot start the thaw watchdog: \(error.message); nothing was frozen")
        }
        guard watchdog.readByte(timeout: 10) == UInt8(ascii: "R") else {
            kill(watchdog.processID, SIGKILL)
            watchdog.wait(timeout: 5)
            throw QemuError.watchdogFailed("the thaw watchdog (pid \(watchdog.processID)) did not report ready within 10 s; nothing was frozen")
        }
        let start = Date()
        var outcome = FreezeOutcome(filesystems: 0, milliseconds: 0)
        var failure: (any Error)?
        var frozen = false
        do {
            outcome.filesystems = try channel.freeze(timeout: limit)
            frozen = true
            TestHooks.pause(at: "guest-frozen")
            try body()
        } catch let error as QemuError where error.code == "Guest.AlreadyFrozen" {
            // Someone else's freeze: not ours to thaw.
            watchdog.finish(sending: UInt8(ascii: "T"))
            watchdog.wait(timeout: 5)
            throw error
        } catch let error as QemuError where !frozen && error.code == "Guest.AgentUnreachable" {
            failure = error
        } catch {
            failure = frozen ? error : QemuError.freezeFailed("\(target.description) did not freeze the guest's filesystems: \((error as? any CodedError)?.message ?? "\(error)") (thawed; snapshot without --freeze for a crash-consistent one)")
        }
        // Thaw on every path: a freeze that failed may have frozen some filesystems.
        let thawed = channel.thaw()
        outcome.milliseconds = Int(Date().timeIntervalSince(start) * 1000)
        if thawed {
            watchdog.finish(sending: UInt8(ascii: "T"))
            watchdog.wait(timeout: 5)
        } else {
            // Ours failed: the watchdog tries (our connection must go first: the channel
            // serves one client at a time).
            channel.close()
            watchdog.finish(sending: UInt8(ascii: "X"))
            let report = watchdog.readByte(timeout: 60)
            watchdog.wait(timeout: 5)
            guard report == UInt8(ascii: "D") else {
                throw QemuError.thawFailed("\(target.description) did not confirm the thaw, nor did the watchdog: the guest's filesystems may still be frozen (run guest-fsfreeze-thaw through the agent, or virsh domfsthaw)")
            }
            outcome.thawedByWatchdog = true
        }
        if let failure { throw failure }
        return outcome
    }

    /// The watchdog's whole life (run in its own process): reports ready, waits for the run
    /// that froze the guest to say it thawed it; if that run ends without saying so, or the
    /// deadline passes (then the run is killed first), thaws the guest and confirms it.
    public static func runWatchdog(target: FreezeTarget, limit: Double, parent: Int32) -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        func say(_ byte: UInt8) {
            var byte = byte
            _ = write(1, &byte, 1)
        }
        func log(_ text: String) {
            let bytes = Array("disksnap: thaw watchdog: \(text)\n".utf8)
            _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        }
        say(UInt8(ascii: "R"))
        var poller = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
        let deadline = Date().addingTimeInterval(limit + watchdogGrace)
        var message: UInt8?
        var timedOut = false
        while true {
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 { timedOut = true; break }
            let rc = poll(&poller, 1, Int32(remaining * 1000) + 1)
            if rc < 0 && errno == EINTR { continue }
            if rc == 0 { continue }
            var byte: UInt8 = 0
            let count = read(0, &byte, 1)
            if count < 0 && errno == EINTR { continue }
            message = count == 1 ? byte : nil
            break
        }
        if message == UInt8(ascii: "T") { return 0 }
        if timedOut {
            // Only the process that started us: a recycled pid is not killed.
            if getppid() == parent {
                kill(parent, SIGKILL)
                log("the run that froze the guest (pid \(parent)) held it frozen past \(Int(limit + watchdogGrace)) s: killed it")
            }
        } else if message == nil {
            log("the run that froze the guest (pid \(parent)) ended without thawing it")
        }
        let giveUp = Date().addingTimeInterval(60)
        while Date() < giveUp {
            if let channel = try? target.connect(), channel.thaw() {
                channel.close()
                log("the guest's filesystems are thawed")
                say(UInt8(ascii: "D"))
                return 0
            }
            usleep(200_000)
        }
        log("could not thaw the guest through \(target.description) within 60 s: its filesystems may still be frozen")
        say(UInt8(ascii: "F"))
        return 1
    }
}
