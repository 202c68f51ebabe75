import CZstd

/// A zstd failure, with libzstd's own explanation.
public struct ZstdError: CodedError {
    public let message: String
    public var code: String { "Chunk.DecompressFailed" }
    public var exitStatus: ExitStatus { .corrupt }
}

/// A reusable zstd compression context. Not thread-safe: one per worker thread.
public final class ZstdCompressor {
    private let context: OpaquePointer
    public let level: Int32

    public init(level: Int32) {
        context = ZSTD_createCCtx()
        self.level = level
    }

    deinit { ZSTD_freeCCtx(context) }

    /// The largest output `compress` can produce for `inputCount` bytes.
    public static func bound(_ inputCount: Int) -> Int { ZSTD_compressBound(inputCount) }

    /// Compresses `input` into `output` (at least `bound(input.count)` bytes); returns the
    /// compressed length.
    public func compress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws(ZstdError) -> Int {
        let n = ZSTD_compressCCtx(context, output.baseAddress, output.count, input.baseAddress, input.count, level)
        if ZSTD_isError(n) != 0 { throw ZstdError(message: String(cString: ZSTD_getErrorName(n))) }
        return n
    }

    public static var levelRange: ClosedRange<Int32> { ZSTD_minCLevel()...ZSTD_maxCLevel() }
}

/// A reusable zstd decompression context. Not thread-safe: one per worker thread.
public final class ZstdDecompressor {
    private let context: OpaquePointer

    public init() { context = ZSTD_createDCtx() }
    deinit { ZSTD_freeDCtx(context) }

    /// The decompressed size a frame's header declares, or nil when it declares none or
    /// the input is not a zstd frame.
    public static func contentSize(_ input: UnsafeRawBufferPointer) -> UInt64? {
        let n = ZSTD_getFrameContentSize(input.baseAddress, input.count)
        return n >= UInt64.max - 1 ? nil : n  // ZSTD_CONTENTSIZE_UNKNOWN, ZSTD_CONTENTSIZE_ERROR
    }

    /// Decompresses one frame into `output`; throws unless it fills exactly `output.count`.
    public func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws(ZstdError) {
        let n = ZSTD_decompressDCtx(context, output.baseAddress, output.count, input.baseAddress, input.count)
        if ZSTD_isError(n) != 0 { throw ZstdError(message: String(cString: ZSTD_getErrorName(n))) }
        if n != output.count {
            throw ZstdError(message: "frame decompressed to \(n) bytes, expected \(output.count)")
        }
    }
}
