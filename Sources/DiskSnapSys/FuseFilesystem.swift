import Synchronization
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
        // Interrupted: the mount is detached, which ends every FUSE worker's read, whichever
        // thread the signal reached (libfuse's own handlers wake the loop only when the main
        // thread takes the signal: a loaded machine left it waiting). Its handlers stay out:
        // they install only over SIG_DFL.
        let interrupted = Atomic<Bool>(false), mounted = Atomic<Bool>(false)
        Signals.onTermination { _ in
            interrupted.store(true, ordering: .sequentiallyConsistent)
            if mounted.load(ordering: .sequentiallyConsistent) { detach(mountpoint) }
        }
        let box = Callbacks(read: read, ready: {
            mounted.store(true, ordering: .sequentiallyConsistent)
            if interrupted.load(ordering: .sequentiallyConsistent) { detach(mountpoint) }
            ready()
        })
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

    /// Unmounts lazily (`umount2(MNT_DETACH)`; `fusermount3 -u -z` for a user without
    /// CAP_SYS_ADMIN): the kernel ends the FUSE connection and the loop returns.
    static func detach(_ mountpoint: String) {
        if umount2(mountpoint, Int32(MNT_DETACH)) == 0 { return }
        var pid: pid_t = 0
        let words: [String] = ["fusermount3", "-u", "-z", mountpoint]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { word in word.withCString { strdup($0) } } + [nil]
        defer { argv.forEach { free($0) } }
        if posix_spawnp(&pid, "fusermount3", nil, nil, argv, environ) == 0 {
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
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
