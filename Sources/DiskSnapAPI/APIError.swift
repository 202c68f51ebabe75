import DiskSnapSys

/// An error the API answers with: the documents' code and HTTP status, and a message that
/// names the offending value. Errors of the engine keep their own codes (they are the
/// documents' codes already: docs/CLI.md's table gives each one's HTTP status).
public struct APIError: CodedError, Equatable {
    public let code: String
    public let message: String
    public let httpStatus: Int

    public init(_ code: String, _ message: String, status: Int) {
        self.code = code
        self.message = message
        self.httpStatus = status
    }

    public var exitStatus: ExitStatus {
        switch httpStatus {
        case 404: .notFound
        case 403: .quota
        case 409: .conflict
        case 500...: .internalError
        default: .invalidParameter
        }
    }

    // The documents' common codes (Alibaba Cloud's "API error center"; Huawei's APIGW codes).
    static func missing(_ name: String) -> APIError {
        APIError("MissingParameter", "the input parameter \(name) that is mandatory for processing this request is not supplied", status: 400)
    }
    static func invalid(_ name: String, _ why: String) -> APIError {
        APIError("InvalidParameter", "the parameter \(name) \(why)", status: 400)
    }
    static func unsupportedOperation(_ action: String, _ version: String) -> APIError {
        APIError("InvalidAction.NotFound", "the action \(action) of API version \(version) is not served here (docs/API.md lists what is)", status: 404)
    }
}
