import DiskSnapSys
import DiskSnapFormat

/// A process's own directory under `tmp/`, held by a lock. A process killed with -9 leaves
/// its area behind; the next writer finds the lock free and removes it.
public final class TemporaryArea: Sendable {
    public let directory: String
    private let lock: FileLock

    public init(repository: Repository) throws {
        Self.removeAbandoned(in: repository.temporaryDirectory)
        let name = "w-" + RandomUUID.generate()
        let lockPath = "\(repository.temporaryDirectory)/\(name).lock"
        guard let lock = try FileLock.tryAcquire(path: lockPath, kind: .exclusive) else {
            throw StoreError(.repositoryLocked, "work area lock \(lockPath) is held by another process")
        }
        directory = "\(repository.temporaryDirectory)/\(name)"
        try FileSystem.makeDirectory(directory)
        self.lock = lock
    }

    public func path(_ name: String) -> String { "\(directory)/\(name)" }

    /// Removes the area and its lock file (on success and on failure alike).
    public func remove() {
        for name in (try? FileSystem.listDirectory(directory)) ?? [] {
            try? FileSystem.removeIfExists("\(directory)/\(name)")
        }
        try? FileSystem.removeDirectory(directory)
        try? FileSystem.removeIfExists(lock.path)
    }

    /// Removes every area whose owner is gone.
    static func removeAbandoned(in temporaryDirectory: String) {
        for name in (try? FileSystem.listDirectory(temporaryDirectory)) ?? [] where name.hasSuffix(".lock") {
            let lockPath = "\(temporaryDirectory)/\(name)"
            guard let lock = try? FileLock.tryAcquire(path: lockPath, kind: .exclusive) else { continue }
            let directory = "\(temporaryDirectory)/\(name.dropLast(5))"
            for file in (try? FileSystem.listDirectory(directory)) ?? [] {
                try? FileSystem.removeIfExists("\(directory)/\(file)")
            }
            try? FileSystem.removeDirectory(directory)
            try? FileSystem.removeIfExists(lockPath)
            _ = lock
        }
    }
}
