import Foundation
import Crypto
import _CryptoExtras
import DiskSnapSys
import DiskSnapFormat

/// `keys/<KeyId>.json`: the master keys sealed under a passphrase (docs/FORMAT.md, "Key
/// files"). scrypt turns the passphrase and the file's salt into a key-encryption key (its
/// parameters recorded); AES-256-GCM seals the 64 bytes of `MasterKeys` under it, with the
/// repository's id and the key's id as associated data, so a key file copied into another
/// repository does not open there. Several files, one per passphrase, open one repository.
public struct KeyFile: VersionedRecord, Sendable, Equatable {
    public static let formatVersion = 1
    public static let noun = "key file"

    public struct Derivation: Codable, Sendable, Equatable {
        /// `scrypt` (a passphrase) or `key-file` (a file of random bytes kept outside the
        /// repository: HKDF-SHA-256 of its bytes, no memory-hard cost needed).
        public var name: String
        /// log2 of scrypt's N (its cost), r, p; 0 for a key file.
        public var logN: Int
        public var r: Int
        public var p: Int
        public var salt: String

        /// 2^15 x 8 x 128 bytes = 32 MiB, about 0.1 s here: scrypt's interactive parameters.
        public static func standard(salt: [UInt8], logN: Int = 15) -> Derivation {
            Derivation(name: "scrypt", logN: logN, r: 8, p: 1, salt: Data(salt).base64EncodedString())
        }

        /// The cost of new passphrase keys: `$DISKSNAP_KDF_LOGN` (10 to 20), else 15. A
        /// repository's keys share the first one's (`KeyRing`); opening reads each file's own.
        public static func configuredLogN() throws -> Int {
            guard let text = FileSystem.environment("DISKSNAP_KDF_LOGN"), !text.isEmpty else { return 15 }
            guard let value = Int(text), (10...20).contains(value) else {
                throw SealError(code: "InvalidParameter.KdfCost", message: "$DISKSNAP_KDF_LOGN '\(text)' is not a whole number from 10 to 20", exitStatus: .invalidParameter)
            }
            return value
        }

        public static func keyFile(salt: [UInt8]) -> Derivation {
            Derivation(name: "key-file", logN: 0, r: 0, p: 0, salt: Data(salt).base64EncodedString())
        }

        /// What this derivation takes: a passphrase or a key file.
        public var takesKeyFile: Bool { name == "key-file" }
    }

    public var formatVersion: Int = Self.formatVersion
    public var keyId: String
    public var repositoryId: String
    public var kdf: Derivation
    /// Base64: the 12-byte nonce, the 64 sealed bytes, the 16-byte tag.
    public var sealedKeys: String
    public var creationTime: String
    public var hostname: String
    public var username: String

    /// A new key file for `keys`, opened by `secret`, made by this host and user unless told
    /// otherwise. `kdf` (another key file's, for a passphrase of the same repository) lets
    /// every passphrase be tried with one KDF run; `keyId` is given when a passphrase changes
    /// (the file keeps its id).
    public static func make(keys: MasterKeys, secret: KeySecret, repositoryId: String,
                            hostname: String = ProcessInfo.processInfo.hostName, username: String = FileSystem.environment("USER") ?? "",
                            kdf: Derivation? = nil, keyId: String? = nil) throws -> KeyFile {
        let kdf = try kdf ?? (secret.isKeyFile ? .keyFile(salt: Sealer.randomBytes(32)) : .standard(salt: Sealer.randomBytes(32), logN: Derivation.configuredLogN()))
        precondition(kdf.takesKeyFile == secret.isKeyFile, "a derivation for the other kind of secret")
        let keyId = keyId ?? "k-" + String(SnapshotID.generate().rawValue.dropFirst(2))
        let wrapping = try wrappingKey(secret, kdf)
        let box = try AES.GCM.seal(keys.raw, using: wrapping, authenticating: associatedData(repositoryId, keyId))
        return KeyFile(keyId: keyId, repositoryId: repositoryId, kdf: kdf,
                       sealedKeys: Data(Array(box.nonce) + Array(box.ciphertext) + Array(box.tag)).base64EncodedString(),
                       creationTime: ISOTime.now(), hostname: hostname, username: username)
    }

    /// A passphrase key file (tests, and the primitives' own callers).
    public static func make(keys: MasterKeys, passphrase: String, repositoryId: String, hostname: String, username: String,
                            kdf: Derivation? = nil) throws -> KeyFile {
        try make(keys: keys, secret: .passphrase(passphrase), repositoryId: repositoryId, hostname: hostname, username: username, kdf: kdf)
    }

    /// The master keys, after one run of the KDF: `Repository.WrongKey` when the passphrase
    /// is not this file's (or the file was changed: the two cannot be told apart).
    public func open(passphrase: String) throws -> MasterKeys {
        try open(wrapping: Self.wrappingKey(.passphrase(passphrase), kdf))
    }

    /// The master keys under a wrapping key already derived (`unlock` derives once for all
    /// the key files that share a derivation).
    func open(wrapping: SymmetricKey) throws -> MasterKeys {
        guard let sealed = Data(base64Encoded: sealedKeys), sealed.count == 12 + MasterKeys.byteCount + 16 else {
            throw SealError.corrupt("key file \(keyId): its sealed keys are not 92 bytes of base64")
        }
        let bytes = Array(sealed)
        do {
            let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: bytes[0..<12]), ciphertext: bytes[12..<76], tag: bytes[76...])
            let raw = try AES.GCM.open(box, using: wrapping, authenticating: Self.associatedData(repositoryId, keyId))
            return MasterKeys(raw: Array(raw))!
        } catch {
            throw SealError.wrongKey("the \(kdf.takesKeyFile ? "key file" : "passphrase") does not open key \(keyId) of repository \(repositoryId)")
        }
    }

    /// The master keys and the key file that opened them: each derivation the files use (one,
    /// normally: a repository's passphrases share it) is run once with `secret`, and the
    /// result tried on every file that uses it. `Repository.WrongKey` when none opens, with
    /// nothing written; a file for another repository is not tried.
    public static func unlock(_ files: [KeyFile], repositoryId: String, with secret: KeySecret) throws -> (keys: MasterKeys, file: KeyFile) {
        let candidates = files.filter { $0.repositoryId == repositoryId && $0.kdf.takesKeyFile == secret.isKeyFile }
        guard !candidates.isEmpty else {
            throw SealError.wrongKey("repository \(repositoryId) has no key for a \(secret.isKeyFile ? "key file" : "passphrase") (\(files.count) key file\(files.count == 1 ? "" : "s") in all)")
        }
        var derivations: [Derivation] = []
        for file in candidates where !derivations.contains(file.kdf) { derivations.append(file.kdf) }
        for kdf in derivations {
            let wrapping = try wrappingKey(secret, kdf)
            for file in candidates where file.kdf == kdf {
                if let keys = try? file.open(wrapping: wrapping) { return (keys, file) }
            }
        }
        throw SealError.wrongKey("the \(secret.isKeyFile ? "key file" : "passphrase") opens none of the \(candidates.count) key\(candidates.count == 1 ? "" : "s") of repository \(repositoryId)")
    }

    static func associatedData(_ repositoryId: String, _ keyId: String) -> [UInt8] {
        Array("disksnap/key/\(repositoryId)/\(keyId)".utf8)
    }

    /// scrypt within sane bounds: a file asking for more than 1 GiB of memory, or a cost
    /// past 2^20, is refused before anything is allocated. A key file: HKDF of its bytes.
    static func wrappingKey(_ secret: KeySecret, _ kdf: Derivation) throws -> SymmetricKey {
        let passphrase: String
        switch secret {
        case .passphrase(let given):
            passphrase = given
        case .keyFile(let path, let bytes):
            guard kdf.name == "key-file", let salt = Data(base64Encoded: kdf.salt), salt.count >= 16 else {
                throw SealError.corrupt("key file derivation \(kdf.name) is not one this disksnap runs")
            }
            guard bytes.count >= 32 else {
                throw SealError.wrongKey("key file \(path) holds \(bytes.count) bytes; a disksnap key file holds at least 32 random bytes")
            }
            return HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: bytes), salt: salt,
                                          info: Array("disksnap/key-file".utf8), outputByteCount: 32)
        }
        let rounds: Int = 1 << max(0, min(kdf.logN, 30))
        let memory: Int = 128 * max(1, kdf.r) * rounds * max(1, kdf.p)
        guard kdf.name == "scrypt", (10...20).contains(kdf.logN), (1...32).contains(kdf.r), (1...16).contains(kdf.p),
              memory <= 1 << 30, let salt = Data(base64Encoded: kdf.salt), salt.count >= 16 else {
            throw SealError.corrupt("key file KDF \(kdf.name) N=2^\(kdf.logN) r=\(kdf.r) p=\(kdf.p) is not one this disksnap runs (scrypt, N 2^10 to 2^20, at most 1 GiB)")
        }
        return try KDF.Scrypt.deriveKey(from: Array(passphrase.utf8), salt: salt, outputByteCount: 32,
                                        rounds: rounds, blockSize: kdf.r, parallelism: kdf.p, maxMemory: memory + (1 << 20))
    }
}

/// What opens a key file: a passphrase, or the bytes of a key file kept outside the repository.
public enum KeySecret: Sendable {
    case passphrase(String)
    case keyFile(path: String, bytes: [UInt8])

    public var isKeyFile: Bool {
        if case .keyFile = self { return true }
        return false
    }
}
