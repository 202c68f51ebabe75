import DiskSnapSys

/// Errors about snapshots as records: names, descriptions, lookup. Codes follow the ECS
/// `CreateSnapshot` document where it has one.
public struct CatalogError: CodedError {
    public let code: String
    public let message: String
    public let exitStatus: ExitStatus
    /// Set where the document gives another status than the class's.
    let documentedHTTPStatus: Int?

    public init(code: String, message: String, exitStatus: ExitStatus, httpStatus: Int? = nil) {
        self.code = code
        self.message = message
        self.exitStatus = exitStatus
        self.documentedHTTPStatus = httpStatus
    }

    public var httpStatus: Int { documentedHTTPStatus ?? exitStatus.defaultHTTPStatus }

    public static func invalid(_ code: String, _ message: String) -> CatalogError {
        CatalogError(code: code, message: message, exitStatus: .invalidParameter)
    }
    public static func quota(_ code: String, _ message: String) -> CatalogError {
        CatalogError(code: code, message: message, exitStatus: .quota)
    }
    public static func notFound(_ message: String) -> CatalogError {
        CatalogError(code: "InvalidSnapshotId.NotFound", message: message, exitStatus: .notFound)
    }
    public static func ambiguous(_ message: String) -> CatalogError {
        CatalogError(code: "InvalidSnapshotName.Ambiguous", message: message, exitStatus: .invalidParameter)
    }
    public static func busy(_ code: String, _ message: String) -> CatalogError {
        CatalogError(code: code, message: message, exitStatus: .busy)
    }
}
