import CShim
#if canImport(Glibc)
import Glibc
#endif

/// An advisory `flock` on a lock file. The kernel drops it when the process dies, kill -9
/// included, so a crash never leaves a stale lock behind.
public final class FileLock: Sendable {
    public enum Kind: Sendable { case shared, exclusive }

    private let file: OpenFile

    /// Takes the lock without waiting; returns nil when another process holds a conflicting one.
    public static func tryAcquire(path: String, kind: Kind) throws(SystemError) -> FileLock? {
        let file = try OpenFile(path: path, mode: [.readWrite, .create], permissions: 0o600)
        let operation = (kind == .shared ? LOCK_SH : LOCK_EX) | LOCK_NB
        while flock(file.descriptor, operation) != 0 {
            if errno == EINTR { continue }
            if errno == EWOULDBLOCK { return nil }
            throw SystemError.current("flock", path)
        }
        return FileLock(file: file)
    }

    /// Takes the lock, waiting for it. Only for locks held for a short moment.
    public static func acquire(path: String, kind: Kind) throws(SystemError) -> FileLock {
        let file = try OpenFile(path: path, mode: [.readWrite, .create], permissions: 0o600)
        while flock(file.descriptor, kind == .shared ? LOCK_SH : LOCK_EX) != 0 {
            if errno == EINTR { continue }
            throw SystemError.current("flock", path)
        }
        return FileLock(file: file)
    }

    private init(file: OpenFile) { self.file = file }

    public var path: String { file.path }

    deinit { flock(file.descriptor, LOCK_UN) }
}

/// Byte-range locks other programs hold (QEMU locks bytes of the images it has open).
public enum FileLocks {
    /// True when another open file description holds a lock conflicting with a write lock on
    /// the range (F_OFD_GETLK); false when none does or the question cannot be asked.
    public static func hasConflictingWriteLock(_ file: OpenFile, offset: UInt64, length: UInt64) -> Bool {
        ds_ofd_write_lock_conflict(file.descriptor, Int64(offset), Int64(length)) == 1
    }

    /// True when a QEMU holds `file` (an image or a block device) open for writing. QEMU
    /// locks byte 100 + n of what it opens for each permission n it holds; write is n = 1.
    /// A QEMU that opened it read-only does not lock byte 101.
    public static func heldForWritingByQemu(_ file: OpenFile) -> Bool {
        hasConflictingWriteLock(file, offset: 101, length: 1)
    }
}
