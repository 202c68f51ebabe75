import CCryptoGlue
#if canImport(Glibc)
import Glibc
#endif

/// AES-256-GCM into the caller's buffers (CCryptoGlue: OpenSSL's libcrypto, loaded by the
/// first call). The sealing format and its keys are `DiskSnapSeal`'s; this is the cipher.
public enum AESGCM {
    public static let keyBytes = 32
    public static let nonceBytes = 12
    public static let tagBytes = 16

    /// Encrypts `input` into `output` (at least as long; may be the same memory) and writes
    /// the tag into `tag`.
    public static func seal(key: UnsafeRawBufferPointer, nonce: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer,
                            _ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer,
                            tag: UnsafeMutableRawBufferPointer) throws(SystemError) {
        try check(key: key, nonce: nonce, count: input.count, output: output.count, tag: tag.count)
        let status = ds_aes256gcm_seal(bytes(key), bytes(nonce), bytes(aad), aad.count, bytes(input), input.count,
                                       mutableBytes(output), tag.baseAddress!.assumingMemoryBound(to: UInt8.self))
        guard status == 0 else { throw failure("AES-256-GCM seal") }
    }

    /// Decrypts `input` into `output` if `tag` authenticates it; false (and `output` holding
    /// nothing to use) when it does not.
    public static func open(key: UnsafeRawBufferPointer, nonce: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer,
                            _ input: UnsafeRawBufferPointer, tag: UnsafeRawBufferPointer,
                            into output: UnsafeMutableRawBufferPointer) throws(SystemError) -> Bool {
        try check(key: key, nonce: nonce, count: input.count, output: output.count, tag: tag.count)
        let status = ds_aes256gcm_open(bytes(key), bytes(nonce), bytes(aad), aad.count, bytes(input), input.count,
                                       bytes(tag), mutableBytes(output))
        guard status >= 0 else { throw failure("AES-256-GCM open") }
        return status == 0
    }

    private static func check(key: UnsafeRawBufferPointer, nonce: UnsafeRawBufferPointer, count: Int, output: Int, tag: Int) throws(SystemError) {
        precondition(key.count == keyBytes && nonce.count == nonceBytes && tag == tagBytes && output >= count, "AES-256-GCM: bad sizes")
        var reason = [CChar](repeating: 0, count: 256)
        if ds_aead_load(&reason, reason.count) != 0 {
            throw SystemError(errno: ELIBACC, operation: String(cString: reason), path: "libcrypto.so.3")
        }
    }

    private static func failure(_ what: String) -> SystemError {
        SystemError(errno: EIO, operation: "\(what) failed in libcrypto", path: "libcrypto.so.3")
    }

    /// A pointer for C, never null (an empty buffer may have none).
    private static func bytes(_ buffer: UnsafeRawBufferPointer) -> UnsafePointer<UInt8> {
        buffer.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? UnsafePointer(empty)
    }

    private static func mutableBytes(_ buffer: UnsafeMutableRawBufferPointer) -> UnsafeMutablePointer<UInt8> {
        buffer.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? empty
    }

    nonisolated(unsafe) private static let empty = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
}
