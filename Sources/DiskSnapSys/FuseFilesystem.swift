#if canImport(Glibc)
import Glibc
#endif
import CFuseGlue

/// A read-only FUSE filesystem (libfuse 3) of flat files in one directory, whose bytes a
/// Swift closure supplies. Requests are served on libfuse's threads: `read` must be
/// thread-safe.
public enum FuseFilesystem {
    public struct File: Sendable {
        public let name: String
        public let size: UInt64
        public init(name: String, size: UInt64) {
            self.name = name
            self.size = size
        }
    }

    /// Fills the buffer with bytes of file `index` from `offset` (clipped to the file's
    /// end); returns the byte count, or a negative errno.
    public typealias Reader = @Sendable (_ index: Int, _ buffer: UnsafeMutableRawBufferPointer, _ offset: UInt64) -> Int32

    /// Mounts at `mountpoint` and serves until unmounted (`fusermount3 -u`, `umount`) or
    /// interrupted (SIGINT, SIGTERM, SIGHUP: unmounted first). `ready` runs once mounted.
    public static func serve(at mountpoint: String, name: String, files: [File], modificationTime: Int64,
                             ready: @escaping @Sendable () -> Void, read: @escaping Reader) throws(SystemError) {
        let box = Callbacks(read: read, ready: ready)
        let names = files.map { strdup($0.name) }
        defer { names.forEach { free($0) } }
        let table = zip(files, names).map { ds_fuse_file(name: UnsafePointer($1), size: $0.size) }
        let rc = table.withUnsafeBufferPointer { entries in
            ds_fuse_serve(mountpoint, name, entries.baseAddress, Int32(entries.count), modificationTime, { context, index, buffer, size, offset in
                let box = Unmanaged<Callbacks>.fromOpaque(context!).takeUnretainedValue()
                return box.read(Int(index), UnsafeMutableRawBufferPointer(start: buffer, count: size), offset)
            }, { context in
                Unmanaged<Callbacks>.fromOpaque(context!).takeUnretainedValue().ready()
            }, Unmanaged.passUnretained(box).toOpaque())
        }
        withExtendedLifetime(box) {}
        guard rc == 0 else { throw SystemError(errno: EIO, operation: "FUSE mount (libfuse said why above)", path: mountpoint) }
    }

    private final class Callbacks: Sendable {
        let read: Reader
        let ready: @Sendable () -> Void
        init(read: @escaping Reader, ready: @escaping @Sendable () -> Void) {
            self.read = read
            self.ready = ready
        }
    }
}
