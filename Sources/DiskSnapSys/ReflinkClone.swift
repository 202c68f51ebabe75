import CShim
#if canImport(Glibc)
import Glibc
#endif

/// A reflink clone of an image file (`FICLONE`): a second file sharing the image's extents,
/// made in milliseconds whatever the size, that no later write to the image changes. Read
/// instead of the image it is that file at one instant: crash-consistent, whoever writes.
///
/// The clone sits beside the image (a clone cannot cross filesystems), named
/// `.disksnap-clone-<tag>-<image name>`, and its maker holds an exclusive flock on it for
/// its whole life: a clone whose lock is free was left by a run that was killed.
public final class ReflinkClone {
    public static let prefix = ".disksnap-clone-"
    /// Kept clones (`create --keep-clone`): `.disksnap-kept-<repository id>-<snapshot id>-<image name>`.
    public static func keptPrefix(repositoryID: String) -> String { ".disksnap-kept-\(repositoryID)-" }
    public let path: String
    public let imagePath: String
    /// Open, with the flock that says its maker is alive.
    private let descriptor: Int32
    private var removed = false

    /// nil, with nothing left behind, when no clone can be made: the filesystem cannot
    /// clone (EOPNOTSUPP, EXDEV, EINVAL, ENOTTY: ext4, tmpfs, NFS), or the directory is
    /// read-only, not writable or full. The image is then read itself, as without a clone
    /// (a change while it is read is detected and fails the snapshot). Throws only when the
    /// image cannot be opened.
    public static func make(of imagePath: String, tag: String) throws(SystemError) -> ReflinkClone? {
        let directory = FileSystem.directoryName(of: imagePath)
        let name = imagePath.split(separator: "/").last.map(String.init) ?? "image"
        let path = "\(directory)/\(prefix)\(tag)-\(name)"
        let source = open(imagePath, O_RDONLY | O_CLOEXEC)
        guard source >= 0 else { throw SystemError.current("open", imagePath) }
        defer { close(source) }
        let target = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o600)
        guard target >= 0 else { return nil }
        // Locked (on this very file) before it has content: no other run takes it for a
        // dead one's.
        guard flock(target, LOCK_EX | LOCK_NB) == 0 else {
            close(target)
            try? FileSystem.remove(path)
            return nil
        }
        TestHooks.durableStep()
        if ds_ficlone(target, source) != 0 || fsync(target) != 0 {
            close(target)
            try? FileSystem.remove(path)
            return nil
        }
        return ReflinkClone(path: path, imagePath: imagePath, descriptor: target)
    }

    private init(path: String, imagePath: String, descriptor: Int32) {
        self.path = path
        self.imagePath = imagePath
        self.descriptor = descriptor
    }

    deinit { remove() }

    /// Where the clone's bytes sit (FIEMAP).
    public func extents() throws(SystemError) -> [FileExtentMap.Extent] {
        try FileExtentMap.extents(of: descriptor, path: path)
    }

    /// Keeps the clone past this run, renamed to `keptPath` (beside the image); returns its
    /// status after the rename, which a later run compares to know it untouched.
    public func keep(as keptPath: String) throws(SystemError) -> FileStatus {
        try FileSystem.rename(path, to: keptPath)
        removed = true
        var st = stat()
        guard fstat(descriptor, &st) == 0 else { throw SystemError.current("fstat", keptPath) }
        return FileStatus(st)
    }

    /// The path of the clone `snapshotID` keeps beside `imagePath`.
    public static func keptPath(besides imagePath: String, repositoryID: String, snapshotID: String) -> String {
        let name = imagePath.split(separator: "/").last.map(String.init) ?? "image"
        return "\(FileSystem.directoryName(of: imagePath))/\(keptPrefix(repositoryID: repositoryID))\(snapshotID)-\(name)"
    }

    /// What a kept clone holds on its own now (the bytes the image no longer shares with it).
    public static func describeKept(_ path: String) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "gone: \(SystemError.current("open", path).message)" }
        defer { close(fd) }
        guard let extents = try? FileExtentMap.extents(of: fd, path: path) else { return "its extents cannot be read" }
        let bytes = FileExtentMap.unsharedBytes(extents)
        return "holds \(bytes) bytes the image no longer shares"
    }

    /// Removes a kept clone if it is still the file that was kept (same inode); returns the
    /// bytes it held on its own, or nil when it was not there.
    public static func removeKept(path: String, inode: UInt64) -> UInt64? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, UInt64(st.st_ino) == inode else { return nil }
        let held = (try? FileExtentMap.extents(of: fd, path: path)).map(FileExtentMap.unsharedBytes) ?? 0
        guard (try? FileSystem.remove(path)) != nil else { return nil }
        return held
    }

    /// Kept clones of this repository beside `imagePath` that are not in `wanted`: removed;
    /// returns the paths removed.
    public static func removeUnwantedKept(besides imagePath: String, repositoryID: String, wanted: Set<String>) -> [String] {
        let directory = FileSystem.directoryName(of: imagePath)
        guard let names = try? FileSystem.listDirectory(directory) else { return [] }
        var removed: [String] = []
        for name in names where name.hasPrefix(keptPrefix(repositoryID: repositoryID)) {
            let path = "\(directory)/\(name)"
            guard !wanted.contains(path), let status = try? FileSystem.statusIfExists(path), status.isRegularFile,
                  let lock = try? FileLock.tryAcquire(path: path, kind: .exclusive) else { continue }
            if (try? FileSystem.remove(path)) != nil { removed.append(path) }
            withExtendedLifetime(lock) {}
        }
        return removed
    }

    /// Removes the clone (its extents stay the image's): unlinked while still locked.
    public func remove() {
        guard !removed else { return }
        removed = true
        try? FileSystem.removeIfExists(path)
        close(descriptor)
    }

    /// Removes clones beside `imagePath` whose maker is gone (their lock is free); a clone
    /// whose lock cannot be tested is left. Returns the paths removed.
    public static func removeAbandoned(besides imagePath: String) -> [String] {
        let directory = FileSystem.directoryName(of: imagePath)
        guard let names = try? FileSystem.listDirectory(directory) else { return [] }
        var removed: [String] = []
        for name in names where name.hasPrefix(prefix) {
            let path = "\(directory)/\(name)"
            guard let status = try? FileSystem.statusIfExists(path), status.isRegularFile,
                  let lock = try? FileLock.tryAcquire(path: path, kind: .exclusive) else { continue }
            if (try? FileSystem.remove(path)) != nil { removed.append(path) }
            withExtendedLifetime(lock) {}
        }
        return removed
    }
}
