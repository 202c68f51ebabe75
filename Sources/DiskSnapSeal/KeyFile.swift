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
        public var name: String
        /// log2 of scrypt's N (its cost), r, p.
        public var logN: Int
        public var r: Int
        public var p: Int
        public var salt: String

        /// 2^15 x 8 x 128 bytes = 32 MiB, about 0.1 s here: scrypt's interactive parameters.
        public static func standard(salt: [UInt8]) -> Derivation {
            Derivation(name: "scrypt", logN: 15, r: 8, p: 1, salt: Data(salt).base64EncodedString())
        }
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

    /// A new key file for `keys`, opened by `passphrase`.
    public static func make(keys: MasterKeys, passphrase: String, repositoryId: String, hostname: String, username: String,
                            kdf: Derivation? = nil) throws -> KeyFile {
        var generator = SystemRandomNumberGenerator()
        let salt = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let kdf = kdf ?? .standard(salt: salt)
        let keyId = "k-" + String(SnapshotID.generate().rawValue.dropFirst(2))
        let wrapping = try wrappingKey(passphrase, kdf)
        let box = try AES.GCM.seal(keys.raw, using: wrapping, authenticating: associatedData(repositoryId, keyId))
        return KeyFile(keyId: keyId, repositoryId: repositoryId, kdf: kdf,
                       sealedKeys: Data(Array(box.nonce) + Array(box.ciphertext) + Array(box.tag)).base64EncodedString(),
                       creationTime: ISOTime.now(), hostname: hostname, username: username)
    }

    /// The master keys, after one run of the KDF: `Repository.WrongKey` when the passphrase
    /// is not this file's (or the file was changed: the two cannot be told apart).
    public func open(passphrase: String) throws -> MasterKeys {
        guard let sealed = Data(base64Encoded: sealedKeys), sealed.count == 12 + MasterKeys.byteCount + 16 else {
            throw SealError.corrupt("key file \(keyId): its sealed keys are not 92 bytes of base64")
        }
        let wrapping = try Self.wrappingKey(passphrase, kdf)
        let bytes = Array(sealed)
        do {
            let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: bytes[0..<12]), ciphertext: bytes[12..<76], tag: bytes[76...])
            let raw = try AES.GCM.open(box, using: wrapping, authenticating: Self.associatedData(repositoryId, keyId))
            return MasterKeys(raw: Array(raw))!
        } catch {
            throw SealError.wrongKey("the passphrase does not open key \(keyId) of repository \(repositoryId)")
        }
    }

    static func associatedData(_ repositoryId: String, _ keyId: String) -> [UInt8] {
        Array("disksnap/key/\(repositoryId)/\(keyId)".utf8)
    }

    /// scrypt within sane bounds: a file asking for more than 1 GiB of memory, or a cost
    /// past 2^20, is refused before anything is allocated.
    static func wrappingKey(_ passphrase: String, _ kdf: Derivation) throws -> SymmetricKey {
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
