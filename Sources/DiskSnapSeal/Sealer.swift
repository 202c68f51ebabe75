import Foundation
import Crypto
import DiskSnapSys
import DiskSnapFormat

/// AES-256-GCM sealing of repository objects (docs/FORMAT.md, "Sealed objects").
///
/// A sealed object is `"DSE1"`, a 16-byte random salt, a 12-byte nonce, the ciphertext and
/// the 16-byte tag. Its key is HKDF-SHA-256 of the master data key with that salt and the
/// object's context (its kind and id) as info: every sealed object has a key of its own, so
/// no (key, nonce) pair is ever used twice, whatever the nonce (random as well). The context
/// is also the AEAD's associated data: an object moved to another name or kind (a block
/// swapped between packs, a record renamed) fails to open.
public struct Sealer: Sendable {
    public static let magic: [UInt8] = Array("DSE1".utf8)
    public static let overhead = 4 + 16 + 12 + 16
    public let keys: MasterKeys

    /// Chunk names under the keys' chunk-id key.
    public let chunkIdentity: ChunkIdentity

    public init(keys: MasterKeys) {
        self.keys = keys
        chunkIdentity = keys.chunkIdentity
    }

    /// What an object is and where it belongs: `pack-block` + pack id + block offset,
    /// `record` + snapshot id, ...
    public struct Context: Sendable {
        public var bytes: [UInt8]
        public init(kind: String, id: String) { bytes = Array("disksnap/\(kind)/\(id)".utf8) }
    }

    /// Seals `plaintext` into `output` (at least `plaintext.count + overhead` bytes): no
    /// buffer is allocated, so a pack builder seals a block straight into its own memory.
    /// Returns the sealed length.
    public func seal(_ plaintext: UnsafeRawBufferPointer, context: Context, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = plaintext.count + Self.overhead
        precondition(output.count >= count, "the output holds the sealed object")
        let salt = Self.randomBytes(16), nonce = Self.randomBytes(12)
        let key = subkeyBytes(salt: salt, context: context)
        UnsafeMutableRawBufferPointer(rebasing: output[0..<32]).copyMemory(from: (Self.magic + salt + nonce).withUnsafeBytes { $0 })
        try key.withUnsafeBytes { key in
            try nonce.withUnsafeBytes { nonce in
                try context.bytes.withUnsafeBytes { aad in
                    try AESGCM.seal(key: key, nonce: nonce, aad: aad, plaintext, into: UnsafeMutableRawBufferPointer(rebasing: output[32..<(count - 16)]),
                                    tag: UnsafeMutableRawBufferPointer(rebasing: output[(count - 16)..<count]))
                }
            }
        }
        return count
    }

    /// Opens the sealed object `sealed` into `output` (at least `sealed.count - overhead`
    /// bytes; not `sealed` itself); returns the plaintext's length. `Repository.Corrupt`
    /// when anything was changed: a flipped bit, a truncation, another context.
    public func open(_ sealed: UnsafeRawBufferPointer, context: Context, into output: UnsafeMutableRawBufferPointer, what: String) throws -> Int {
        guard sealed.count >= Self.overhead, sealed.starts(with: Self.magic) else {
            throw SealError.corrupt("\(what): not a sealed object (too short, or no DSE1 header)")
        }
        let count = sealed.count - Self.overhead
        precondition(output.count >= count, "the output holds the plaintext")
        let key = subkeyBytes(salt: Array(sealed[4..<20]), context: context)
        let opened = try key.withUnsafeBytes { key in
            try context.bytes.withUnsafeBytes { aad in
                try AESGCM.open(key: key, nonce: UnsafeRawBufferPointer(rebasing: sealed[20..<32]), aad: aad,
                                UnsafeRawBufferPointer(rebasing: sealed[32..<(32 + count)]),
                                tag: UnsafeRawBufferPointer(rebasing: sealed[(32 + count)...]), into: output)
            }
        }
        guard opened else { throw SealError.corrupt("\(what): does not authenticate (changed, truncated, or sealed for another place)") }
        return count
    }

    /// `plaintext` sealed (small objects: records, settings, tables of contents).
    public func seal(_ plaintext: some DataProtocol, context: Context) throws -> [UInt8] {
        let bytes = Array(plaintext)
        var sealed = [UInt8](repeating: 0, count: bytes.count + Self.overhead)
        _ = try bytes.withUnsafeBytes { input in
            try sealed.withUnsafeMutableBytes { output in try seal(input, context: context, into: output) }
        }
        return sealed
    }

    /// The plaintext of a sealed object (`open(_:context:into:what:)`).
    public func open(_ sealed: [UInt8], context: Context, what: String) throws -> [UInt8] {
        try open(sealed[...], context: context, what: what)
    }

    public func open(_ sealed: ArraySlice<UInt8>, context: Context, what: String) throws -> [UInt8] {
        var output = [UInt8](repeating: 0, count: max(0, sealed.count - Self.overhead))
        let count = try sealed.withUnsafeBytes { input in
            try output.withUnsafeMutableBytes { out in try open(input, context: context, into: out, what: what) }
        }
        return Array(output[..<count])
    }

    /// The object's own key, HKDF-SHA-256(data key, salt, context), as bytes for the cipher.
    func subkeyBytes(salt: [UInt8], context: Context) -> [UInt8] {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: keys.data), salt: salt, info: context.bytes, outputByteCount: 32)
            .withUnsafeBytes { Array($0) }
    }
}
