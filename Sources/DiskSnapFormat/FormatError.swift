import DiskSnapSys

/// A repository file that does not parse: wrong magic, unknown version, bad length, checksum
/// mismatch. Always names the file and what was wrong with it.
public struct FormatError: CodedError {
    public let file: String
    public let problem: String

    public init(file: String, _ problem: String) {
        self.file = file
        self.problem = problem
    }

    public var code: String { "Repository.Corrupt" }
    public var message: String { "\(file): \(problem)" }
    public var exitStatus: ExitStatus { .corrupt }
}

/// A malformed parameter: chunk size, compression setting, identifier.
public struct ParameterError: CodedError {
    public let code: String
    public let message: String
    public init(code: String, _ message: String) {
        self.code = code
        self.message = message
    }
    public var exitStatus: ExitStatus { .invalidParameter }
}
