#if canImport(Glibc)
import Glibc
#endif
import DiskSnapSys
import DiskSnapFormat

/// A repository directory (docs/FORMAT.md, "Repository layout"):
///
///     config.json          RepositoryConfig; its presence makes the directory a repository
///     packs/<id>.pack      chunk data
///     index/<id>.idx       chunk index segments
///     fixed/<snap>.fidx    fixed indexes, one per snapshot
///     snapshots/<snap>.json snapshot records
///     locks/               flock files (docs/DESIGN.md, "Locking")
///     tmp/                 per-process work areas, removed when their owner is gone
public final class Repository: Sendable {
    public let root: String
    public let config: RepositoryConfig

    public var configPath: String { root + "/config.json" }
    public var packsDirectory: String { root + "/packs" }
    public var indexDirectory: String { root + "/index" }
    public var fixedIndexDirectory: String { root + "/fixed" }
    public var snapshotsDirectory: String { root + "/snapshots" }
    public var disksDirectory: String { root + "/disks" }
    public var locksDirectory: String { root + "/locks" }
    public var temporaryDirectory: String { root + "/tmp" }

    public func packPath(_ id: PackID) -> String { "\(packsDirectory)/\(id.hex).pack" }
    public func fixedIndexPath(_ id: SnapshotID) -> String { "\(fixedIndexDirectory)/\(id.rawValue).fidx" }
    public func recordPath(_ id: SnapshotID) -> String { "\(snapshotsDirectory)/\(id.rawValue).json" }
    public func diskPath(_ id: DiskID) -> String { "\(disksDirectory)/\(id.rawValue).json" }
    public var gcStatePath: String { root + "/gc.json" }

    /// The pending garbage-collection state, if a gc condemned packs that are not removed yet.
    public func gcState() throws -> GCState? {
        guard FileSystem.exists(gcStatePath) else { return nil }
        return try GCState.decode(try FileSystem.readFile(gcStatePath), file: gcStatePath)
    }

    private init(root: String, config: RepositoryConfig) {
        self.root = root
        self.config = config
    }

    static func subdirectories(of root: String) -> [String] {
        ["packs", "index", "fixed", "snapshots", "disks", "locks", "tmp"].map { root + "/" + $0 }
    }

    /// Opens an existing repository.
    public static func open(at path: String) throws -> Repository {
        let root = FileSystem.absolutePath(path)
        let configPath = root + "/config.json"
        guard FileSystem.exists(configPath) else {
            throw StoreError(.repositoryNotFound, "no disksnap repository at \(root) (run 'disksnap --repo \(path) init' or 'create')")
        }
        let config = try RepositoryConfig.decode(try FileSystem.readFile(configPath), file: configPath)
        for directory in subdirectories(of: root) where !FileSystem.exists(directory) {
            throw FormatError(file: directory, "directory is missing")
        }
        return Repository(root: root, config: config)
    }

    /// Creates a repository. The directories come first and `config.json` last, published
    /// with link(2) so that of two racing inits exactly one wins.
    public static func initialize(at path: String, config: RepositoryConfig) throws -> Repository {
        let root = FileSystem.absolutePath(path)
        try FileSystem.makeDirectories(root)
        for directory in subdirectories(of: root) { try FileSystem.makeDirectory(directory) }
        let configPath = root + "/config.json"
        if FileSystem.exists(configPath) {
            throw StoreError(.repositoryExists, "a disksnap repository already exists at \(root)")
        }
        let temporary = root + "/tmp/" + FileSystem.uniqueTemporaryName(for: configPath)
        try FileSystem.writeAtomically(RecordJSON.encode(config), to: temporary, temporaryDirectory: root + "/tmp")
        let linked = Result { () throws(SystemError) in try FileSystem.link(temporary, to: configPath) }
        try? FileSystem.removeIfExists(temporary)
        if case .failure(let error) = linked {
            if error.code == "IO.Exists" {
                throw StoreError(.repositoryExists, "a disksnap repository already exists at \(root)")
            }
            throw error
        }
        try FileSystem.syncDirectory(root)
        return Repository(root: root, config: config)
    }

    /// Opens the repository, creating it with the default settings when nothing is there yet.
    public static func openOrInitialize(at path: String) throws -> Repository {
        if FileSystem.exists(FileSystem.absolutePath(path) + "/config.json") { return try open(at: path) }
        do {
            return try initialize(at: path, config: RepositoryConfig(chunkSize: .default, compression: .default))
        } catch let error as StoreError where error.kind == .repositoryExists {
            return try open(at: path)  // another process initialized it first
        }
    }

    /// Writes a small file atomically inside the repository.
    public func publish(_ bytes: [UInt8], to path: String) throws {
        try FileSystem.writeAtomically(bytes, to: path, temporaryDirectory: temporaryDirectory)
    }

    // MARK: Locks

    /// The repository-wide lock: shared for commands that add or read, exclusive for those
    /// that remove data others may be using (docs/DESIGN.md, "Locking").
    public func lock(_ kind: FileLock.Kind, for command: String) throws -> FileLock {
        guard let lock = try FileLock.tryAcquire(path: locksDirectory + "/repository.lock", kind: kind) else {
            throw StoreError(.repositoryLocked, "repository \(root) is locked by another disksnap process; '\(command)' needs it \(kind == .exclusive ? "alone" : "not exclusively held")")
        }
        return lock
    }

    /// A named exclusive lock (a snapshot in creation, a source being read); nil when held.
    /// The catalog lock: held for the milliseconds in which rules are checked against the
    /// records and a new record is written, so that two creates cannot both pass a quota.
    public func lockCatalog() throws -> FileLock {
        try FileLock.acquire(path: locksDirectory + "/catalog.lock", kind: .exclusive)
    }

    /// Held shared by every command that reads packs (restore, diff, mount, export, check),
    /// for as long as it reads; gc takes it exclusive, without waiting, for the moments in
    /// which it replaces index segments and removes packs.
    public func readersLock() throws -> FileLock {
        try FileLock.acquire(path: locksDirectory + "/readers.lock", kind: .shared)
    }

    public func tryLock(name: String) throws -> FileLock? {
        try FileLock.tryAcquire(path: "\(locksDirectory)/\(name).lock", kind: .exclusive)
    }

    /// True while some live process holds the named lock; false when its file is gone or the
    /// lock is free. A lock that cannot be probed (its file cannot be opened, flock fails:
    /// EMFILE, EACCES, EISDIR, ...) is no answer: that throws `Repository.LockUnknown`, and
    /// every caller reads it as "held" (gc stops, delete refuses, a record stays
    /// `progressing`), never as "free".
    public func isLockHeld(name: String) throws(StoreError) -> Bool {
        let path = "\(locksDirectory)/\(name).lock"
        guard FileSystem.exists(path) else { return false }
        do {
            return try FileLock.tryAcquire(path: path, kind: .exclusive) == nil
        } catch {
            if error.errno == ENOENT { return false }  // removed by its owner since the check
            throw StoreError(.lockUnknown, "cannot tell whether lock \(path) is held: \(error.message)")
        }
    }

    // MARK: Objects
    //
    // Every write, removal and listing of a repository object goes through the methods
    // below, and packs are read through `openPack` (docs/DESIGN.md, "Repository objects"):
    // the one place a second backend (a bucket, with this directory as its cache) changes.
    // Everything else reads the metadata files under `root` directly.

    /// Publishes a snapshot record (atomically: a reader sees the old or the new one).
    public func writeRecord(_ bytes: [UInt8], _ id: SnapshotID) throws { try publish(bytes, to: recordPath(id)) }

    /// Removes a snapshot record, durably (`fsync(snapshots/)`).
    public func removeRecord(_ id: SnapshotID) throws {
        try FileSystem.removeIfExists(recordPath(id))
        try FileSystem.syncDirectory(snapshotsDirectory)
    }

    /// The ids of every record file, whatever its content.
    public func recordIDs() throws -> [String] {
        try FileSystem.listDirectory(snapshotsDirectory).filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }
    }

    public func writeDisk(_ bytes: [UInt8], _ id: DiskID) throws { try publish(bytes, to: diskPath(id)) }

    public func removeDisk(_ id: DiskID) throws {
        try FileSystem.removeIfExists(diskPath(id))
        try FileSystem.syncDirectory(disksDirectory)
    }

    public func diskFileNames() throws -> [String] {
        try FileSystem.listDirectory(disksDirectory).filter { $0.hasSuffix(".json") }
    }

    public func writeGCState(_ bytes: [UInt8]) throws { try publish(bytes, to: gcStatePath) }

    public func removeGCState() throws {
        try FileSystem.removeIfExists(gcStatePath)
        try FileSystem.syncDirectory(root)
    }

    /// Publishes a finished fixed index (a synced work-area file on this filesystem).
    public func publishFixedIndex(_ path: String, _ id: SnapshotID) throws {
        try FileSystem.rename(path, to: fixedIndexPath(id))
        try FileSystem.syncDirectory(fixedIndexDirectory)
    }

    /// Removes a fixed index, durably; returns the bytes it held (0 if it was absent).
    @discardableResult
    public func removeFixedIndex(_ id: String) throws -> UInt64 {
        let path = "\(fixedIndexDirectory)/\(id).fidx"
        let size = try FileSystem.statusIfExists(path)?.size ?? 0
        try FileSystem.removeIfExists(path)
        try FileSystem.syncDirectory(fixedIndexDirectory)
        return size
    }

    /// The ids (file names without `.fidx`) of every fixed index.
    public func fixedIndexIDs() throws -> [String] {
        try FileSystem.listDirectory(fixedIndexDirectory).filter { $0.hasSuffix(".fidx") }.map { String($0.dropLast(5)) }
    }

    /// Publishes closed, synced packs from a work area (`<area>/<id>.pack`), then makes
    /// their names durable (`fsync(packs/)`).
    public func publishPacks(_ ids: [PackID], from area: TemporaryArea) throws {
        for id in ids { try FileSystem.rename(area.path(id.hex + ".pack"), to: packPath(id)) }
        try FileSystem.syncDirectory(packsDirectory)
    }

    public func packIDs() throws -> [PackID] {
        try FileSystem.listDirectory(packsDirectory).compactMap { name in
            name.hasSuffix(".pack") ? PackID(hex: String(name.dropLast(5))) : nil
        }
    }

    /// A pack's size in bytes, nil if it is absent.
    public func packSize(_ id: PackID) throws -> UInt64? { try FileSystem.statusIfExists(packPath(id))?.size }

    /// A pack, opened for reading; `IO.NotFound` if it is absent.
    public func openPack(_ id: PackID) throws -> any PackData { try OpenFile(path: packPath(id)) }

    /// Removes packs, one at a time, then makes it durable; returns the bytes removed and
    /// how many were there.
    public func removePacks(_ ids: some Sequence<PackID>) throws -> (bytes: UInt64, count: Int) {
        var bytes: UInt64 = 0, count = 0
        for id in ids {
            if let status = try FileSystem.statusIfExists(packPath(id)) {
                try FileSystem.remove(packPath(id))
                bytes += status.size
                count += 1
            }
        }
        try FileSystem.syncDirectory(packsDirectory)
        return (bytes, count)
    }

    /// Publishes a finished, fsynced segment file (a work-area file on this filesystem) in
    /// `index/`: renamed, then the directory fsynced. `name` defaults to a fresh random one.
    public func publishSegment(_ path: String, name: String = PackID.generate().hex) throws {
        try FileSystem.rename(path, to: "\(indexDirectory)/\(name).idx")
        try FileSystem.syncDirectory(indexDirectory)
    }

    /// The path of a segment named by `indexSegmentNames`, for reading.
    public func segmentPath(_ name: String) -> String { "\(indexDirectory)/\(name)" }

    /// Removes segments (names from `indexSegmentNames`), then makes it durable.
    public func removeSegments(_ names: [String]) throws {
        for name in names { try FileSystem.removeIfExists(segmentPath(name)) }
        try FileSystem.syncDirectory(indexDirectory)
    }

    public func indexSegmentNames() throws -> [String] {
        try FileSystem.listDirectory(indexDirectory).filter { $0.hasSuffix(".idx") }
    }
}

/// A pack opened for reading: a file here, ranged reads of an object in a bucket.
public protocol PackData: Sendable {
    /// For messages: a path or a key.
    var name: String { get }
    func size() throws -> UInt64
    /// Reads up to `buffer.count` bytes at `offset`; fewer only at the end.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int
    func readBytes(count: Int, at offset: UInt64) throws -> [UInt8]
}

extension OpenFile: PackData {
    public var name: String { path }
    public func size() throws -> UInt64 { try status().size }
}
