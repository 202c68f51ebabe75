#if canImport(Glibc)
import Glibc
#endif

/// A failed system call, with errno, the operation and the path it concerned.
///
/// Not an error: ENXIO from SEEK_DATA past the last data (handled as "no more data"),
/// EINTR (retried where it happens).
public struct SystemError: CodedError, Equatable {
    public let errno: Int32
    public let operation: String
    public let path: String

    public init(errno: Int32, operation: String, path: String) {
        self.errno = errno
        self.operation = operation
        self.path = path
    }

    /// The current `errno` for `operation` on `path`.
    public static func current(_ operation: String, _ path: String) -> SystemError {
        SystemError(errno: Glibc.errno, operation: operation, path: path)
    }

    public var code: String {
        switch errno {
        case ENOENT, ENOTDIR: "IO.NotFound"
        case ENOSPC, EDQUOT: "IO.NoSpace"
        case EACCES, EPERM, EROFS: "IO.PermissionDenied"
        case EBUSY: "IO.Busy"
        case EEXIST: "IO.Exists"
        default: "IO.Error"
        }
    }

    public var message: String {
        "\(operation) \(path): \(String(cString: strerror(errno))) (errno \(errno))"
    }

    public var exitStatus: ExitStatus {
        switch errno {
        case ENOENT, ENOTDIR: .notFound
        case EBUSY: .busy
        case EEXIST: .conflict
        default: .ioError
        }
    }
}

/// Runs `body` until it stops failing with EINTR; throws on any other failure.
@inline(__always)
func retryingEINTR<T: BinaryInteger>(_ operation: String, _ path: String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        if Glibc.errno == EINTR { continue }
        throw SystemError.current(operation, path)
    }
}
