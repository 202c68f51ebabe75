import Foundation
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapSeal

/// The key files of an encrypted repository (`disksnap key`): each one wraps the same master
/// keys under its own passphrase or key file, so adding, changing or removing one rewrites
/// that file alone and never touches a sealed object. Edits hold the catalog lock: two
/// removals at once cannot leave the repository without a key.
public struct KeyRing {
    public let repository: Repository

    public init(repository: Repository) throws {
        guard repository.isEncrypted else {
            throw EngineError(code: "Repository.NotEncrypted", "\(repository.location) is not encrypted: it has no keys", exitStatus: .invalidParameter)
        }
        self.repository = repository
    }

    /// Every key file, oldest first.
    public func keys() throws -> [KeyFile] {
        try repository.keyFiles().sorted { ($0.creationTime, $0.keyId) < ($1.creationTime, $1.keyId) }
    }

    /// The key this process opened the repository with.
    public var current: KeyFile { repository.openedKey! }

    /// A new key file opened by `secret`. A passphrase shares the derivation (salt and cost)
    /// of the repository's other passphrases, so that any passphrase is tried with one KDF run.
    @discardableResult
    public func add(_ secret: KeySecret) throws -> KeyFile {
        let lock = try repository.lockCatalog()
        defer { withExtendedLifetime(lock) {} }
        let key = try makeKey(secret, keyId: nil)
        try repository.addKeyFile(key)
        return key
    }

    /// The key this process opened the repository with, opened from now on by `secret`
    /// instead: the same file (its id) rewritten, nothing else.
    @discardableResult
    public func change(to secret: KeySecret) throws -> KeyFile {
        let lock = try repository.lockCatalog()
        defer { withExtendedLifetime(lock) {} }
        let key = try makeKey(secret, keyId: current.keyId)
        try repository.replaceKeyFile(key)
        return key
    }

    /// A key file of the repository's master keys opened by `secret` (under `keyId`, or a new
    /// id). A passphrase takes the derivation of the repository's passphrases (a first one,
    /// or a key file, a new one).
    private func makeKey(_ secret: KeySecret, keyId: String?) throws -> KeyFile {
        let shared = secret.isKeyFile ? nil : try keys().first { !$0.kdf.takesKeyFile }?.kdf
        return try KeyFile.make(keys: repository.sealer!.keys, secret: secret, repositoryId: repository.config.repositoryId,
                                kdf: shared, keyId: keyId)
    }

    /// Removes a key file. Refused for the last one (the repository would be unreadable) and
    /// for the one this process opened with (remove it with another key, so that a typo in
    /// an id cannot lock the remover out).
    public func remove(_ keyId: String) throws {
        let lock = try repository.lockCatalog()
        defer { withExtendedLifetime(lock) {} }
        let all = try keys()
        guard all.contains(where: { $0.keyId == keyId }) else {
            throw EngineError(code: "Key.NotFound", "no key \(keyId) in \(repository.location) (disksnap key list)", exitStatus: .notFound)
        }
        guard all.count > 1 else {
            throw EngineError(code: "Key.LastKey", "key \(keyId) is the repository's only key: removing it would leave the repository unreadable", exitStatus: .conflict)
        }
        guard keyId != current.keyId else {
            throw EngineError(code: "Key.InUse", "key \(keyId) is the one this command opened the repository with: open it with another key to remove this one", exitStatus: .conflict)
        }
        try repository.removeKeyFile(keyId)
    }
}
