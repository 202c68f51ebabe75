import Foundation
import Crypto
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

    /// Seals `plaintext` and hands the sealed object to `emit` in pieces, in order (header,
    /// ciphertext, tag; `overhead` bytes more than the plaintext in all): a pack builder
    /// stages them where they go, with no copy of a whole block in between.
    public func seal(_ plaintext: UnsafeRawBufferPointer, context: Context, emit: (UnsafeRawBufferPointer) throws -> Void) rethrows {
        let salt = Self.randomBytes(16)
        let key = subkey(salt: salt, context: context)
        let box = try! AES.GCM.seal(plaintext, using: key, nonce: AES.GCM.Nonce(), authenticating: context.bytes)
        try (Self.magic + salt + Array(box.nonce)).withUnsafeBytes { try emit($0) }
        try box.ciphertext.withUnsafeBytes { try emit($0) }
        try box.tag.withUnsafeBytes { try emit($0) }
    }

    /// Opens the sealed object `sealed` into `output` (at least `sealed.count - overhead`
    /// bytes); returns the plaintext's length. `Repository.Corrupt` as `open`.
    public func open(_ sealed: UnsafeRawBufferPointer, context: Context, into output: UnsafeMutableRawBufferPointer, what: String) throws(SealError) -> Int {
        guard sealed.count >= Self.overhead, sealed.starts(with: Self.magic) else {
            throw .corrupt("\(what): not a sealed object (too short, or no DSE1 header)")
        }
        precondition(output.count >= sealed.count - Self.overhead, "the output holds the plaintext")
        let salt = Array(sealed[4..<20])
        do {
            let box = try AES.GCM.SealedBox(combined: UnsafeRawBufferPointer(rebasing: sealed[20...]))
            let plaintext = try AES.GCM.open(box, using: subkey(salt: salt, context: context), authenticating: context.bytes)
            return plaintext.copyBytes(to: output)
        } catch {
            throw .corrupt("\(what): does not authenticate (changed, truncated, or sealed for another place)")
        }
    }

    public func seal(_ plaintext: some DataProtocol, context: Context) -> [UInt8] {
        let salt = Self.randomBytes(16)
        let key = subkey(salt: salt, context: context)
        // Sealing with a fresh 32-byte key and a fresh nonce cannot fail.
        let box = try! AES.GCM.seal(plaintext, using: key, nonce: AES.GCM.Nonce(), authenticating: context.bytes)
        return Self.magic + salt + Array(box.nonce) + Array(box.ciphertext) + Array(box.tag)
    }

    /// The plaintext, or `Repository.Corrupt` when anything was changed: a flipped bit, a
    /// truncation, another context.
    public func open(_ sealed: [UInt8], context: Context, what: String) throws(SealError) -> [UInt8] {
        try open(sealed[...], context: context, what: what)
    }

    public func open(_ sealed: ArraySlice<UInt8>, context: Context, what: String) throws(SealError) -> [UInt8] {
        let start = sealed.startIndex, end = sealed.endIndex
        guard sealed.count >= Self.overhead, Array(sealed[start..<start + 4]) == Self.magic else {
            throw .corrupt("\(what): not a sealed object (too short, or no DSE1 header)")
        }
        let salt = Array(sealed[start + 4..<start + 20])
        do {
            let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: sealed[start + 20..<start + 32]),
                                            ciphertext: sealed[start + 32..<end - 16], tag: sealed[(end - 16)...])
            return Array(try AES.GCM.open(box, using: subkey(salt: salt, context: context), authenticating: context.bytes))
        } catch {
            throw .corrupt("\(what): does not authenticate (changed, truncated, or sealed for another place)")
        }
    }

    func subkey(salt: [UInt8], context: Context) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: keys.data), salt: salt, info: context.bytes, outputByteCount: 32)
    }
}
