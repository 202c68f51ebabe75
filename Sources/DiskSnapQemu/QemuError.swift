import DiskSnapSys

/// Errors of talking to a running QEMU (docs/CLI.md, "Running VMs").
public struct QemuError: CodedError {
    public let code: String
    public let message: String
    public let exitStatus: ExitStatus

    public init(_ code: String, _ message: String, exitStatus: ExitStatus) {
        self.code = code
        self.message = message
        self.exitStatus = exitStatus
    }

    /// Nothing listens at the socket, or it is not a socket.
    static func unreachable(_ message: String) -> QemuError { QemuError("Qemu.Unreachable", message, exitStatus: .notFound) }
    /// Something answers, but not QMP.
    static func notQMP(_ message: String) -> QemuError { QemuError("Qemu.NotQmp", message, exitStatus: .invalidParameter) }
    /// This QEMU lacks a command the point-in-time view needs.
    static func unsupported(_ message: String) -> QemuError { QemuError("Qemu.Unsupported", message, exitStatus: .invalidParameter) }
    /// A QMP command failed: QEMU's error class and description.
    static func commandFailed(_ command: String, _ errorClass: String, _ description: String) -> QemuError {
        QemuError("Qemu.CommandFailed", "\(command): \(description) (\(errorClass))", exitStatus: .ioError)
    }
    /// The connection ended or stopped answering: QEMU exited, was killed or hangs.
    static func gone(_ message: String) -> QemuError { QemuError("Qemu.Gone", message, exitStatus: .ioError) }
    /// The QEMU behind a --qmp socket is a libvirt domain's (or cannot be told apart from one).
    static func managedByLibvirt(_ message: String) -> QemuError { QemuError("Qemu.ManagedByLibvirt", message, exitStatus: .invalidParameter) }
    /// No node (or not the one named) has the image open.
    static func nodeNotFound(_ message: String) -> QemuError { QemuError("Qemu.NodeNotFound", message, exitStatus: .notFound) }
    /// Several nodes have the image open: `--node` must say which.
    static func nodeAmbiguous(_ message: String) -> QemuError { QemuError("Qemu.NodeAmbiguous", message, exitStatus: .invalidParameter) }
    /// Another disksnap is making a view on this QEMU, or its NBD server is someone else's.
    static func busy(_ code: String, _ message: String) -> QemuError { QemuError(code, message, exitStatus: .busy) }

    /// No guest agent answers at the socket `--guest-agent` names.
    static func agentUnreachable(_ message: String) -> QemuError { QemuError("Guest.AgentUnreachable", message, exitStatus: .notFound) }
    /// The guest agent's channel closed or stopped answering mid-command.
    static func agentGone(_ message: String) -> QemuError { QemuError("Guest.AgentGone", message, exitStatus: .ioError) }
    /// The guest's filesystems are already frozen by someone else: disksnap thaws only what it froze.
    static func alreadyFrozen(_ message: String) -> QemuError { QemuError("Guest.AlreadyFrozen", message, exitStatus: .busy) }
    /// The agent could not freeze the guest's filesystems (or not within the limit); thawed.
    static func freezeFailed(_ message: String) -> QemuError { QemuError("Guest.FreezeFailed", message, exitStatus: .ioError) }
    /// Neither disksnap nor its watchdog could confirm the guest thawed.
    static func thawFailed(_ message: String) -> QemuError { QemuError("Guest.ThawFailed", message, exitStatus: .ioError) }
    /// The watchdog that thaws the guest if disksnap dies did not start: nothing was frozen.
    static func watchdogFailed(_ message: String) -> QemuError { QemuError("Guest.WatchdogFailed", message, exitStatus: .internalError) }
}
