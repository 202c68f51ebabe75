import Foundation
import DiskSnapAPIWire
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore

/// The key pairs that may call a repository's API (`serve --new-key`, `--remove-key`): one
/// file, `api/credentials.json` under the repository's local directory (a bucket's local
/// cache for a repository in a bucket), mode 0600, replaced atomically. The same pair signs
/// the Alibaba and the Huawei clients.
public struct APICredentials: Sendable, Equatable {
    public struct Key: Codable, Sendable, Equatable {
        public var accessKeyId: String
        public var accessKeySecret: String
        public var creationTime: String
    }

    struct File: Codable {
        var formatVersion: Int
        var keys: [Key]
    }

    public static let formatVersion = 1
    public var keys: [Key]

    public static func path(repositoryRoot: String) -> String { repositoryRoot + "/api/credentials.json" }

    /// The keys in the file; none when there is no file. A file others may read is refused:
    /// the secrets in it would not be secret.
    public static func load(repository: Repository) throws -> APICredentials {
        let path = path(repositoryRoot: repository.root)
        guard let status = try FileSystem.statusIfExists(path) else { return APICredentials(keys: []) }
        guard status.mode & 0o077 == 0 else {
            throw APIError("Credentials.Unsafe", "\(path) can be read by others (mode \(String(status.mode & 0o777, radix: 8))); chmod 600 it", status: 500, exit: .ioError)
        }
        let file = try RecordJSON.decode(File.self, from: try repository.readObject(path), file: path)
        guard file.formatVersion == formatVersion else {
            throw APIError("Credentials.Unsupported", "\(path) has format version \(file.formatVersion); this disksnap reads \(formatVersion)", status: 500, exit: .corrupt)
        }
        return APICredentials(keys: file.keys)
    }

    /// Written atomically, sealed in an encrypted repository.
    public func save(repository: Repository) throws {
        try repository.writeLocalObject(RecordJSON.encode(File(formatVersion: Self.formatVersion, keys: keys)),
                                        to: Self.path(repositoryRoot: repository.root))
    }

    public func secret(for accessKeyId: String) -> String? { keys.first { $0.accessKeyId == accessKeyId }?.accessKeySecret }

    /// A new pair from the system's random generator: a 20-character id (upper-case letters
    /// and digits, as both clouds' ids are) and a 40-character secret.
    public static func generateKey() -> Key {
        var generator = SystemRandomNumberGenerator()
        let upper = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        let any = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
        let id = "DS" + String((0..<18).map { _ in upper[Int.random(in: 0..<upper.count, using: &generator)] })
        let secret = String((0..<40).map { _ in any[Int.random(in: 0..<any.count, using: &generator)] })
        return Key(accessKeyId: id, accessKeySecret: secret, creationTime: ISOTime.now())
    }
}
