import DiskSnapSys

/// An error the API answers with: the documents' code and HTTP status, and a message that
/// names the offending value. Errors of the engine keep their own codes (they are the
/// documents' codes already: docs/CLI.md's table gives each one's HTTP status).
public struct APIError: CodedError, Equatable {
    public let code: String
    public let message: String
    public let httpStatus: Int
    /// Set where the CLI's class differs from the HTTP status's (a server's own setup).
    let exit: ExitStatus?

    public init(_ code: String, _ message: String, status: Int, exit: ExitStatus? = nil) {
        self.code = code
        self.message = message
        self.httpStatus = status
        self.exit = exit
    }

    public var exitStatus: ExitStatus {
        if let exit { return exit }
        switch httpStatus {
        case 404: return .notFound
        case 403: return .quota
        case 409: return .conflict
        case 500...: return .internalError
        default: return .invalidParameter
        }
    }

    // The documents' common codes (Alibaba Cloud's "API error center"; Huawei's APIGW codes).
    public static func missing(_ name: String) -> APIError {
        APIError("MissingParameter", "the input parameter \(name) that is mandatory for processing this request is not supplied", status: 400)
    }
    public static func invalid(_ name: String, _ why: String) -> APIError {
        APIError("InvalidParameter", "the parameter \(name) \(why)", status: 400)
    }
    public static func unsupportedOperation(_ action: String, _ version: String) -> APIError {
        APIError("InvalidAction.NotFound", "the action \(action) of API version \(version) is not served here (docs/API.md lists what is)", status: 404)
    }
}
