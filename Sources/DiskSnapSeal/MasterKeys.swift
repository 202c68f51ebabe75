import Foundation
import Crypto
import DiskSnapSys
import DiskSnapFormat

/// The secrets of an encrypted repository (issue 17, docs/FORMAT.md "Encryption"): drawn
/// at random once, at `init --encryption`, and kept only sealed in key files. Two keys:
/// one seals every object (through a subkey per sealed object, `Sealer`), one makes chunk
/// ids (HMAC-SHA-256 of the chunk), so that the SHA-256 of a known block appears nowhere.
public struct MasterKeys: Sendable, Equatable {
    public static let byteCount = 64
    let data: [UInt8]
    let chunkID: [UInt8]

    public static func generate() -> MasterKeys {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<byteCount).map { _ in UInt8.random(in: 0...255, using: &generator) }
        return MasterKeys(raw: bytes)!
    }

    /// A new data key, and `other`'s chunk-id key: a repository whose chunks are named as
    /// `other`'s are, so that copies between the two deduplicate (`init --chunk-ids-from`).
    public static func generate(sharingChunkIdsOf other: MasterKeys) -> MasterKeys {
        MasterKeys(raw: Array(generate().data) + other.chunkID)!
    }

    /// From the 64 bytes a key file seals (data key, then chunk-id key).
    public init?(raw: [UInt8]) {
        guard raw.count == Self.byteCount else { return nil }
        data = Array(raw[0..<32])
        chunkID = Array(raw[32..<64])
    }

    var raw: [UInt8] { data + chunkID }

    /// How the repository these keys open names chunks: HMAC-SHA-256 under the chunk-id key.
    public var chunkIdentity: ChunkIdentity { ChunkIdentity(key: chunkID) }
}

/// Errors of encryption: a key that does not open the repository, a sealed object that does
/// not authenticate.
public struct SealError: CodedError {
    public let code: String
    public let message: String
    public let exitStatus: ExitStatus

    public static func wrongKey(_ message: String) -> SealError { SealError(code: "Repository.WrongKey", message: message, exitStatus: .invalidParameter) }
    public static func corrupt(_ message: String) -> SealError { SealError(code: "Repository.Corrupt", message: message, exitStatus: .corrupt) }
}
