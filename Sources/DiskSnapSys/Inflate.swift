import CZlib
import CZstd

/// Decompression of qcow2's compressed clusters: raw deflate (zlib without its header, as
/// QEMU writes it) or one zstd frame. The input may run past the compressed data (QEMU
/// records its length in whole 512-byte sectors); decoding stops at the stream's end.
public enum ClusterDecompression {
    /// Fills `output` from a raw deflate stream; false when the stream is damaged or ends
    /// before `output` is full.
    public static func inflateRaw(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool {
        var stream = z_stream()
        guard inflateInit2_(&stream, -15, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return false }
        defer { inflateEnd(&stream) }
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.avail_in = uInt(input.count)
        stream.next_out = output.baseAddress?.assumingMemoryBound(to: Bytef.self)
        stream.avail_out = uInt(output.count)
        let rc = inflate(&stream, Z_FINISH)
        return (rc == Z_STREAM_END || rc == Z_OK || rc == Z_BUF_ERROR) && stream.avail_out == 0
    }

    /// Fills `output` from the zstd frame at the start of `input`.
    public static func zstdFrame(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool {
        let frame = ZSTD_findFrameCompressedSize(input.baseAddress, input.count)
        guard ZSTD_isError(frame) == 0 else { return false }
        let n = ZSTD_decompress(output.baseAddress, output.count, input.baseAddress, frame)
        return ZSTD_isError(n) == 0 && n == output.count
    }
}
