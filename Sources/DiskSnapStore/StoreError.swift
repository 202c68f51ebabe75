import DiskSnapSys

/// Errors of the chunk store and the repository around it.
public struct StoreError: CodedError {
    public enum Kind: String, Sendable {
        case repositoryNotFound = "Repository.NotFound"
        case repositoryExists = "Repository.AlreadyExists"
        case repositoryLocked = "Repository.Locked"
        /// A lock whose state cannot be read: treated as held.
        case lockUnknown = "Repository.LockUnknown"
        case chunkMissing = "Chunk.Missing"
        case chunkCorrupt = "Chunk.Corrupt"
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var code: String { kind.rawValue }
    public var exitStatus: ExitStatus {
        switch kind {
        case .repositoryNotFound: .notFound
        case .repositoryExists: .conflict
        case .repositoryLocked, .lockUnknown: .busy
        case .chunkMissing, .chunkCorrupt: .corrupt
        }
    }
}
