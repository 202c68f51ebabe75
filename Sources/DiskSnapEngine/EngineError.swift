import DiskSnapSys

/// Errors of snapshot, restore and check runs.
public struct EngineError: CodedError {
    public let code: String
    public let message: String
    public let exitStatus: ExitStatus

    public init(code: String, _ message: String, exitStatus: ExitStatus) {
        self.code = code
        self.message = message
        self.exitStatus = exitStatus
    }

    static func sourceNotFound(_ path: String) -> EngineError {
        EngineError(code: "InvalidDiskId.NotFound", "source \(path) does not exist", exitStatus: .notFound)
    }
    static func sourceUnsupported(_ message: String) -> EngineError {
        EngineError(code: "InvalidDiskId.ValueNotSupported", message, exitStatus: .invalidParameter)
    }
    static func sourceChanged(_ message: String) -> EngineError {
        EngineError(code: "Source.ChangedDuringRead", message, exitStatus: .conflict)
    }
    static func sourceInUse(_ message: String) -> EngineError {
        EngineError(code: "Source.InUse", message, exitStatus: .conflict)
    }
    static func targetExists(_ message: String) -> EngineError {
        EngineError(code: "Target.Exists", message, exitStatus: .conflict)
    }
    static func targetInUse(_ message: String) -> EngineError {
        EngineError(code: "Target.InUse", message, exitStatus: .conflict)
    }
    static func targetTooSmall(_ message: String) -> EngineError {
        EngineError(code: "Target.TooSmall", message, exitStatus: .invalidParameter)
    }
    static func snapshotNotRestorable(_ message: String) -> EngineError {
        EngineError(code: "IncorrectSnapshotStatus", message, exitStatus: .conflict)
    }
}

/// Adds where an error happened ("snapshot s-..., chunk at offset N") to its message.
struct ContextError: CodedError {
    let underlying: any CodedError
    let context: String
    var code: String { underlying.code }
    var message: String { "\(context): \(underlying.message)" }
    var exitStatus: ExitStatus { underlying.exitStatus }
}
