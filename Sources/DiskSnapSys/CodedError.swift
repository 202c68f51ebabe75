/// Every error disksnap reports carries a stable code, a message that names the offending
/// value, and the exit status the CLI returns for it (documented in docs/CLI.md).
public protocol CodedError: Error, CustomStringConvertible {
    /// Stable dotted code, e.g. `InvalidSnapshotName.Malformed` or `Repository.Corrupt`.
    var code: String { get }
    var message: String { get }
    var exitStatus: ExitStatus { get }
    /// The HTTP status of the API documents; by default from the exit status's class.
    var httpStatus: Int { get }
}

extension CodedError {
    public var description: String { "\(code): \(message)" }

    public var httpStatus: Int { exitStatus.defaultHTTPStatus }
}

extension ExitStatus {
    /// The HTTP status the API documents give this class of error.
    public var defaultHTTPStatus: Int {
        switch self {
        case .success: 200
        case .invalidParameter, .usage, .problemsFound: 400
        case .notFound: 404
        case .quota, .busy: 403
        case .conflict: 409
        case .corrupt, .ioError, .internalError: 500
        }
    }
}

/// Process exit statuses; the table in docs/CLI.md is the contract.
public enum ExitStatus: Int32, Sendable {
    case success = 0
    /// `check` found problems.
    case problemsFound = 1
    /// A parameter is malformed (name, description, chunk size, level).
    case invalidParameter = 2
    /// A snapshot, source or repository does not exist.
    case notFound = 3
    /// The request conflicts with what exists: target exists, source changed while read,
    /// source in use.
    case conflict = 4
    /// Another process holds a lock the request needs.
    case busy = 5
    /// Stored data is corrupt or missing: the repository needs `check`.
    case corrupt = 6
    /// Reading or writing failed (EIO, ENOSPC, permissions).
    case ioError = 7
    /// A snapshot quota would be exceeded.
    case quota = 8
    /// A bug or an unexpected state.
    case internalError = 70
    /// Command-line usage error (from the argument parser).
    case usage = 64
}
