#if canImport(Glibc)
import Glibc
#endif
import CShim

/// Block-device ioctls, through CShim.
public enum BlockDevice {
    public static func size(_ file: OpenFile) throws(SystemError) -> UInt64 {
        var size: UInt64 = 0
        _ = try retryingEINTR("ioctl(BLKGETSIZE64)", file.path) { ds_block_device_size(file.descriptor, &size) }
        return size
    }

    public static func logicalSectorSize(_ file: OpenFile) throws(SystemError) -> UInt32 {
        var size: UInt32 = 0
        _ = try retryingEINTR("ioctl(BLKSSZGET)", file.path) { ds_block_logical_sector_size(file.descriptor, &size) }
        return size
    }

    public static func physicalSectorSize(_ file: OpenFile) throws(SystemError) -> UInt32 {
        var size: UInt32 = 0
        _ = try retryingEINTR("ioctl(BLKPBSZGET)", file.path) { ds_block_physical_sector_size(file.descriptor, &size) }
        return size
    }

    /// Zeroes `length` bytes at `offset` with BLKZEROOUT; the kernel falls back to writing
    /// zeroes when the device cannot unmap, so the range always reads back as zeroes.
    /// BLKZEROOUT takes whole 512-byte sectors: the pieces of a range that start or end
    /// inside a sector (the short last chunk of an odd-sized image) are written as zeroes.
    public static func zeroOut(_ file: OpenFile, offset: UInt64, length: UInt64) throws(SystemError) {
        let sector: UInt64 = 512
        let end = offset + length
        let lower = min((offset + sector - 1) / sector * sector, end), upper = max(end / sector * sector, lower)
        if upper > lower {
            _ = try retryingEINTR("ioctl(BLKZEROOUT)", file.path) { ds_block_zero_out(file.descriptor, lower, upper - lower) }
        }
        let zeroes = [UInt8](repeating: 0, count: Int(sector))
        for (start, count) in [(offset, lower - offset), (upper, end - upper)] where count > 0 {
            try file.write(Array(zeroes[..<Int(count)]), at: start)
        }
    }

    public static func major(_ device: UInt64) -> UInt32 { UInt32(ds_major(device)) }
    public static func minor(_ device: UInt64) -> UInt32 { UInt32(ds_minor(device)) }
    public static func makeDevice(major: UInt32, minor: UInt32) -> UInt64 { ds_makedev(major, minor) }
}

/// The all-zero test used on every chunk.
@inline(__always)
public func isAllZero(_ buffer: UnsafeRawBufferPointer) -> Bool {
    buffer.isEmpty || ds_is_all_zero(buffer.baseAddress!, buffer.count) == 1
}

/// A byte range `[start, end)`.
public struct ByteRange: Sendable, Equatable, CustomStringConvertible {
    public var start: UInt64
    public var end: UInt64
    public init(start: UInt64, end: UInt64) {
        precondition(start <= end)
        self.start = start
        self.end = end
    }
    public var count: UInt64 { end - start }
    public var description: String { "[\(start), \(end))" }
}

/// Where a regular file holds data, by SEEK_DATA/SEEK_HOLE. Everything outside the returned
/// ranges reads as zeroes and is never read. On a filesystem without hole support the
/// kernel reports the whole file as data, which is correct, only slower.
public enum Extents {
    public static func dataRanges(of file: OpenFile, size: UInt64) throws(SystemError) -> [ByteRange] {
        var ranges: [ByteRange] = []
        var offset: UInt64 = 0
        while offset < size {
            let dataStart = ds_seek_data(file.descriptor, Int64(offset))
            if dataStart < 0 {
                if errno == ENXIO { break }  // no data after offset
                if errno == EINVAL { return [ByteRange(start: offset, end: size)] }  // no SEEK_DATA here
                throw SystemError.current("lseek(SEEK_DATA)", file.path)
            }
            let holeStart = ds_seek_hole(file.descriptor, dataStart)
            if holeStart < 0 { throw SystemError.current("lseek(SEEK_HOLE)", file.path) }
            let start = min(UInt64(dataStart), size), end = min(UInt64(holeStart), size)
            if end > start { ranges.append(ByteRange(start: start, end: end)) }
            offset = max(end, start + 1)
        }
        return ranges
    }
}
