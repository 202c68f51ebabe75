import Synchronization
#if canImport(Glibc)
import Glibc
#endif
import CShim

/// What `stat` tells about a file, with the fields disksnap uses.
public struct FileStatus: Sendable, Equatable {
    public let size: UInt64
    public let mode: UInt32
    public let device: UInt64
    public let inode: UInt64
    /// For a block device: the device number it stands for.
    public let representedDevice: UInt64
    public let modificationTime: Timestamp
    public let changeTime: Timestamp
    /// Bytes allocated on disk (st_blocks x 512).
    public let allocatedBytes: UInt64

    public struct Timestamp: Sendable, Equatable {
        public let seconds: Int
        public let nanoseconds: Int
    }

    public var isRegularFile: Bool { mode & UInt32(S_IFMT) == UInt32(S_IFREG) }
    public var isBlockDevice: Bool { mode & UInt32(S_IFMT) == UInt32(S_IFBLK) }
    public var isDirectory: Bool { mode & UInt32(S_IFMT) == UInt32(S_IFDIR) }

    init(_ st: stat) {
        size = UInt64(st.st_size)
        mode = st.st_mode
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        representedDevice = UInt64(st.st_rdev)
        modificationTime = Timestamp(seconds: st.st_mtim.tv_sec, nanoseconds: st.st_mtim.tv_nsec)
        changeTime = Timestamp(seconds: st.st_ctim.tv_sec, nanoseconds: st.st_ctim.tv_nsec)
        allocatedBytes = UInt64(st.st_blocks) * 512
    }
}

/// An open file descriptor, closed when the last reference goes.
///
/// `pread`/`pwrite` carry their own offsets, so one `OpenFile` is shared by worker threads.
public final class OpenFile: Sendable {
    public let descriptor: Int32
    public let path: String

    public struct Mode: OptionSet, Sendable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        public static let readOnly = Mode([])
        public static let writeOnly = Mode(rawValue: O_WRONLY)
        public static let readWrite = Mode(rawValue: O_RDWR)
        public static let create = Mode(rawValue: O_CREAT)
        /// With `create`: fail when the file exists. On a block device alone: exclusive open,
        /// failing with EBUSY while the device is mounted or held.
        public static let exclusive = Mode(rawValue: O_EXCL)
        public static let truncate = Mode(rawValue: O_TRUNC)
        public static let direct = Mode(rawValue: ds_o_direct())
        public static let directory = Mode(rawValue: O_DIRECTORY)
    }

    public init(path: String, mode: Mode = .readOnly, permissions: UInt32 = 0o600) throws(SystemError) {
        let flags = mode.rawValue | O_CLOEXEC
        descriptor = try retryingEINTR("open", path) { Glibc.open(path, flags, permissions) }
        self.path = path
    }

    deinit { Glibc.close(descriptor) }

    public func status() throws(SystemError) -> FileStatus {
        var st = stat()
        _ = try retryingEINTR("stat", path) { fstat(descriptor, &st) }
        return FileStatus(st)
    }

    /// Reads until `buffer` is full or the end of the file; returns the bytes read.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        var done = 0
        while done < buffer.count {
            let n = try retryingEINTR("read", path) {
                pread(descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Reads exactly `buffer.count` bytes or throws `EIO`-coded short-read error.
    public func readExactly(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) {
        let n = try read(into: buffer, at: offset)
        if n != buffer.count {
            throw SystemError(errno: EIO, operation: "read \(buffer.count) bytes at \(offset) (file ends after \(n))", path: path)
        }
    }

    public func readBytes(count: Int, at offset: UInt64) throws(SystemError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let n = try bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(SystemError) in try read(into: buffer, at: offset) }
        }.get()
        bytes.removeSubrange(n...)
        return bytes
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(SystemError) {
        TestHooks.durableStep()
        var done = 0
        while done < buffer.count {
            let n = try retryingEINTR("write", path) {
                pwrite(descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            done += n
        }
    }

    public func write(_ bytes: [UInt8], at offset: UInt64) throws(SystemError) {
        try bytes.withUnsafeBytes { buffer in
            Result { () throws(SystemError) in try write(buffer, at: offset) }
        }.get()
    }

    public func sync() throws(SystemError) {
        TestHooks.durableStep()
        _ = try retryingEINTR("fsync", path) { fsync(descriptor) }
    }

    public func syncFilesystem() throws(SystemError) {
        _ = try retryingEINTR("syncfs", path) { ds_syncfs(descriptor) }
    }

    public func truncate(to size: UInt64) throws(SystemError) {
        TestHooks.durableStep()
        _ = try retryingEINTR("ftruncate", path) { ftruncate(descriptor, off_t(size)) }
    }

    /// Hints the kernel that the file is read from start to end.
    /// Makes `[offset, offset + length)` a hole (reads as zeroes, frees its blocks); where the
    /// filesystem cannot punch holes, writes zeroes instead.
    public func punchHole(offset: UInt64, length: UInt64) throws(SystemError) {
        if ds_punch_hole(descriptor, Int64(offset), Int64(length)) == 0 { return }
        guard errno == EOPNOTSUPP || errno == ENOSYS else { throw SystemError.current("fallocate(PUNCH_HOLE)", path) }
        let zeroes = [UInt8](repeating: 0, count: Int(min(length, 1 << 20)))
        var done: UInt64 = 0
        while done < length {
            let n = Int(min(UInt64(zeroes.count), length - done))
            let result = zeroes.withUnsafeBytes { b in
                Result { () throws(SystemError) in try write(UnsafeRawBufferPointer(rebasing: b[..<n]), at: offset + done) }
            }
            try result.get()
            done += UInt64(n)
        }
    }

    /// Drops the file's clean pages from the page cache, so that the next reads come from the
    /// disk (a verification pass must not read back what it just wrote from memory).
    public func dropCache() { _ = ds_fadvise_dontneed(descriptor, 0, 0) }

    public func adviseSequential() { _ = ds_fadvise_sequential(descriptor) }
}

/// Writes a file through a second, `O_DIRECT` descriptor where it can: for data written once
/// and not read back soon (packs, restore targets), the page cache only costs a copy and a
/// long final fsync. A write whose buffer, offset or length is not aligned to `alignment`,
/// one the filesystem refuses (EINVAL), and every write on a filesystem without `O_DIRECT`
/// goes through `file`, the ordinary descriptor, which also serves fsync.
public final class DirectWriter: Sendable {
    public static let alignment = 4096
    public let file: OpenFile
    private let direct: OpenFile?

    /// `file` must be open for writing. The second open is plain (never `O_EXCL`): a block
    /// device's exclusive claim stays with `file`.
    public init(file: OpenFile) {
        self.file = file
        direct = try? OpenFile(path: file.path, mode: [.writeOnly, .direct])
    }

    /// True when `O_DIRECT` can take this buffer at this offset.
    public static func isAligned(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) -> Bool {
        offset % UInt64(alignment) == 0 && buffer.count % alignment == 0 && Int(bitPattern: buffer.baseAddress) % alignment == 0
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(SystemError) {
        if let direct, Self.isAligned(buffer, at: offset) {
            do {
                try direct.write(buffer, at: offset)
                return
            } catch where error.errno == EINVAL {
                // This filesystem or device wants another alignment: the page cache takes it.
            }
        }
        try file.write(buffer, at: offset)
    }
}

/// Reads that bypass the page cache (`O_DIRECT`) when buffer, offset and length are aligned,
/// for one pass over a disk that is compared, not kept (in-place restore, diff): no copy
/// through the cache, nothing evicted. Anything unaligned, and every read where the
/// filesystem refuses `O_DIRECT`, goes through `file`.
public final class DirectReader: Sendable {
    public let file: OpenFile
    private let direct: OpenFile?

    public init(file: OpenFile) {
        self.file = file
        direct = try? OpenFile(path: file.path, mode: .direct)
    }

    public func readExactly(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) {
        if let direct, DirectWriter.isAligned(UnsafeRawBufferPointer(buffer), at: offset) {
            do {
                try direct.readExactly(into: buffer, at: offset)
                return
            } catch where error.errno == EINVAL {
                // Another alignment is wanted here: the page cache serves this read.
            }
        }
        try file.readExactly(into: buffer, at: offset)
    }
}

/// Leaves the page cache as a one-pass read found it (what the `nocache` tool does): before
/// a unit of the file is read, `note` records which of its pages are cached (mmap + mincore,
/// nothing faulted in); after the read, `release` drops only the pages the read brought in.
/// Streaming a 100 GiB image evicts nothing the machine was using, and pages that were
/// already cached (dirty ones among them: dropping those would start their writeback) stay.
///
/// Readahead (which a cold read needs: 50% faster here) runs past the unit being read into
/// the next ones, so a reader notes those too before it reads: a unit's first note is taken
/// before any read that could have brought its pages in, and later notes are ignored.
/// Shared by the worker threads; units are identified by their number.
public final class PageCacheCourtesy: Sendable {
    private let file: OpenFile
    private let notes = Mutex<[Int: [UInt8]]>([:])

    public init(file: OpenFile) { self.file = file }

    /// Records which pages of unit `key`, bytes `[offset, offset + length)`, are cached,
    /// unless that was recorded already.
    public func note(_ key: Int, offset: UInt64, length: Int) {
        if notes.withLock({ $0[key] != nil }) { return }
        let pages = ds_page_count(Int64(offset), length)
        guard pages > 0 else { return }
        var vector = [UInt8](repeating: 0, count: pages)
        let rc = vector.withUnsafeMutableBufferPointer { ds_resident_pages(file.descriptor, Int64(offset), length, $0.baseAddress) }
        guard rc >= 0 else { return }  // unknown residency: the unit's cache is left alone
        notes.withLock { if $0[key] == nil { $0[key] = vector } }
    }

    /// Drops the zero pages that readahead past each data range put in the hole after it
    /// (up to `reach` bytes): no unit covers them. Dropping hole pages costs nobody
    /// anything, as reading a hole needs no I/O. Call after the last read.
    public func releaseHoles(after dataRanges: [ByteRange], size: UInt64, reach: UInt64) {
        for (i, range) in dataRanges.enumerated() {
            let holeEnd = min(i + 1 < dataRanges.count ? dataRanges[i + 1].start : size, range.end + reach)
            if holeEnd > range.end { _ = ds_fadvise_dontneed(file.descriptor, Int64(range.end), Int64(holeEnd - range.end)) }
        }
    }

    /// Drops the pages of unit `key` that were not cached when it was noted.
    public func release(_ key: Int, offset: UInt64, length: Int) {
        guard let vector = notes.withLock({ $0.removeValue(forKey: key) }) else { return }
        _ = vector.withUnsafeBufferPointer { ds_drop_pages_not_resident(file.descriptor, Int64(offset), length, $0.baseAddress) }
    }
}

/// A file read at offsets: an open file, or a sealed file read through its key
/// (`SealedFileReader`). Index segments and fixed indexes are read through this, so that
/// one reader serves plain and encrypted repositories.
public protocol RandomAccessReading: Sendable {
    /// For messages.
    var path: String { get }
    /// The bytes a reader sees (a sealed file's plaintext size).
    func size() throws -> UInt64
    /// Reads until `buffer` is full or the end; returns the bytes read.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int
}

extension RandomAccessReading {
    /// Exactly `buffer.count` bytes, or an `EIO`-coded short-read error.
    public func readExactly(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        let n = try read(into: buffer, at: offset)
        if n != buffer.count {
            throw SystemError(errno: EIO, operation: "read \(buffer.count) bytes at \(offset) (file ends after \(n))", path: path)
        }
    }

    /// Up to `count` bytes at `offset`; fewer only at the end.
    public func readBytes(count: Int, at offset: UInt64) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let n = try bytes.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        bytes.removeSubrange(n...)
        return bytes
    }
}

extension OpenFile: RandomAccessReading {
    public func size() throws -> UInt64 { try status().size }
}
