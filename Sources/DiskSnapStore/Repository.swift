#if canImport(Glibc)
import Glibc
#endif
import Foundation
import DiskSnapSys
import DiskSnapFormat
import DiskSnapSeal

/// A repository directory (docs/FORMAT.md, "Repository layout"):
///
///     config.json          RepositoryConfig; its presence makes the directory a repository
///     packs/<id>.pack      chunk data
///     index/<id>.idx       chunk index segments
///     fixed/<snap>.fidx    fixed indexes, one per snapshot
///     snapshots/<snap>.json snapshot records
///     locks/               flock files (docs/DESIGN.md, "Locking")
///     tmp/                 per-process work areas, removed when their owner is gone
///     keys/<key>.json      an encrypted repository's key files (docs/FORMAT.md, "Encryption")
///
/// An encrypted repository (`sealer` set) seals every object as it is written and opens it
/// as it is read, here: records, disk records and the gc state whole, index segments and
/// fixed indexes a page at a time (`SealedFileReader`), pack blocks and tables of contents
/// in the pack writer and readers (`PackBuilder`, `BlockDecoder`). Chunks are named by its
/// `chunkIdentity`. Nothing above this type sees a sealed byte.
///
/// A repository may also live in a bucket (`remote`): `root` is then its local cache, which
/// holds copies of the metadata objects in the same layout, and the locks and work areas of
/// this host (`RepositoryCache`; docs/DESIGN.md, "A repository in a bucket").
public final class Repository: Sendable {
    /// The repository's directory, or a bucket repository's cache.
    public let root: String
    public let config: RepositoryConfig
    /// The bucket (a store rooted at the repository's prefix), nil for a local repository.
    public let remote: (any BlobStore)?
    /// An encrypted repository's keys (its objects are sealed); nil for one that is not.
    public let sealer: Sealer?
    /// The key file that opened an encrypted repository.
    public let openedKey: KeyFile?

    public var isEncrypted: Bool { sealer != nil }
    /// How chunks are named here: SHA-256, or HMAC-SHA-256 under the chunk-id key.
    public var chunkIdentity: ChunkIdentity { sealer?.chunkIdentity ?? .sha256 }

    /// Asked for the passphrase or key file when the repository turns out to be encrypted
    /// (not before: an unencrypted repository never asks).
    public typealias KeyProvider = @Sendable () throws -> KeySecret

    /// For messages: the directory, or `s3://bucket/prefix`.
    public var location: String { remote?.location ?? root }

    public var configPath: String { root + "/config.json" }
    public var packsDirectory: String { root + "/packs" }
    public var indexDirectory: String { root + "/index" }
    public var fixedIndexDirectory: String { root + "/fixed" }
    public var snapshotsDirectory: String { root + "/snapshots" }
    public var disksDirectory: String { root + "/disks" }
    public var locksDirectory: String { root + "/locks" }
    public var temporaryDirectory: String { root + "/tmp" }
    public var keysDirectory: String { root + "/keys" }

    public func packPath(_ id: PackID) -> String { "\(packsDirectory)/\(id.hex).pack" }
    public func fixedIndexPath(_ id: SnapshotID) -> String { "\(fixedIndexDirectory)/\(id.rawValue).fidx" }
    public func recordPath(_ id: SnapshotID) -> String { "\(snapshotsDirectory)/\(id.rawValue).json" }
    public func diskPath(_ id: DiskID) -> String { "\(disksDirectory)/\(id.rawValue).json" }
    public var gcStatePath: String { root + "/gc.json" }

    /// The pending garbage-collection state, if a gc condemned packs that are not removed yet.
    public func gcState() throws -> GCState? {
        guard FileSystem.exists(gcStatePath) else { return nil }
        return try GCState.decode(try readObject(gcStatePath), file: gcStatePath)
    }

    private init(root: String, config: RepositoryConfig, remote: (any BlobStore)? = nil, unlocked: Unlocked? = nil) {
        self.root = root
        self.config = config
        self.remote = remote
        sealer = unlocked?.sealer
        openedKey = unlocked?.key
    }

    /// An encrypted repository's settings and keys, once a key file opened.
    struct Unlocked {
        let sealer: Sealer
        let key: KeyFile
    }

    /// The settings in `config.json` (`bytes`): as they are, or for an encrypted repository
    /// (format version 2) opened with the master keys of the first key file `secret` opens.
    static func readConfig(_ bytes: [UInt8], file: String, location: String, keyFiles: () throws -> [KeyFile],
                           keys: KeyProvider?) throws -> (RepositoryConfig, Unlocked?) {
        guard try EncryptedConfig.version(of: bytes, file: file) == EncryptedConfig.formatVersion else {
            return (try RepositoryConfig.decode(bytes, file: file), nil)
        }
        let envelope = try EncryptedConfig.decode(bytes, file: file)
        guard envelope.encryption == .current else {
            throw FormatError(file: file, "encryption \(envelope.encryption.cipher) with \(envelope.encryption.chunkIds) chunk ids is not one this disksnap reads")
        }
        guard let keys else {
            throw SealError.wrongKey("repository \(location) is encrypted: give its passphrase ($DISKSNAP_PASSWORD, --password-file, --password-command, or at a terminal) or --key-file")
        }
        let files = try keyFiles()
        guard !files.isEmpty else { throw SealError.corrupt("repository \(location) is encrypted but holds no key file (keys/ is empty)") }
        let (master, key) = try KeyFile.unlock(files, repositoryId: envelope.repositoryId, with: try keys())
        let sealer = Sealer(keys: master)
        guard let sealed = Data(base64Encoded: envelope.sealedConfig) else { throw FormatError(file: file, "SealedConfig is not base64") }
        let inner = try sealer.open(Array(sealed), context: Self.configContext(envelope.repositoryId), what: "\(file): sealed settings")
        let config = try RepositoryConfig.decode(inner, file: file)
        guard config.repositoryId == envelope.repositoryId else {
            throw FormatError(file: file, "sealed settings name repository \(config.repositoryId), not \(envelope.repositoryId)")
        }
        return (config, Unlocked(sealer: sealer, key: key))
    }

    static func configContext(_ repositoryId: String) -> Sealer.Context { Sealer.Context(kind: "config", id: repositoryId) }

    /// `config.json` for a new repository: the settings as they are, or (`secret` given)
    /// sealed under new master keys, with the first key file, which `secret` opens. With
    /// `other`, the new keys share its chunk-id key (`init --chunk-ids-from`), the data key
    /// drawn anew.
    static func newConfig(_ config: RepositoryConfig, secret: KeySecret?, sharingChunkIdsOf other: MasterKeys?) throws -> (bytes: [UInt8], key: KeyFile?) {
        guard let secret else { return (RecordJSON.encode(config), nil) }
        var sealedSettings = config
        sealedSettings.encryption = "aes-256-gcm"
        let master = other.map { MasterKeys.generate(sharingChunkIdsOf: $0) } ?? MasterKeys.generate()
        let key = try KeyFile.make(keys: master, secret: secret, repositoryId: config.repositoryId)
        let sealed = try Sealer(keys: master).seal(RecordJSON.encode(sealedSettings), context: configContext(config.repositoryId))
        let envelope = EncryptedConfig(repositoryId: config.repositoryId, sealedConfig: Data(sealed).base64EncodedString())
        return (RecordJSON.encode(envelope), key)
    }

    static let configKey = BlobKey(validated: "config.json")

    /// Opens the repository in `remote`, with its cache under `cacheRoot` (one directory per
    /// repository id inside it), brought up to date with the bucket first.
    public static func open(remote: any BlobStore, cacheRoot: String, keys: KeyProvider? = nil) throws -> Repository {
        let bytes: [UInt8]
        do {
            bytes = try remote.read(configKey).bytes
        } catch let error as BlobStoreError where error.kind == .notFound {
            throw StoreError(.repositoryNotFound, "no disksnap repository at \(remote.location) (run 'disksnap --repo \(remote.location) init')")
        }
        let (config, unlocked) = try readConfig(bytes, file: "\(remote.location)/config.json", location: remote.location,
                                                keyFiles: { try bucketKeyFiles(remote) }, keys: keys)
        let root = cacheRoot + "/" + config.repositoryId
        for directory in subdirectories(of: root) { try FileSystem.makeDirectories(directory) }
        let cachedConfig = root + "/config.json"
        if (try? FileSystem.readFile(cachedConfig)) != bytes {
            try FileSystem.writeAtomically(bytes, to: cachedConfig, temporaryDirectory: root + "/tmp")
        }
        try RepositoryCache.synchronize(remote, root: root)
        return Repository(root: root, config: config, remote: remote, unlocked: unlocked)
    }

    /// Creates a repository in `remote`: `config.json` is created create-only, so of two
    /// racing inits exactly one wins. Encrypted (`secret`): the key file goes up first, and is
    /// removed again if another init won.
    public static func initialize(remote: any BlobStore, cacheRoot: String, config: RepositoryConfig, secret: KeySecret? = nil,
                                  sharingChunkIdsOf other: MasterKeys? = nil) throws -> Repository {
        let (bytes, key) = try newConfig(config, secret: secret, sharingChunkIdsOf: other)
        if let key { try remote.create(keyBlobKey(key.keyId), RecordJSON.encode(key)) }
        do {
            try remote.create(configKey, bytes)
        } catch let error as BlobStoreError where error.kind == .alreadyExists {
            if let key { try? remote.delete(keyBlobKey(key.keyId)) }
            throw StoreError(.repositoryExists, "a disksnap repository already exists at \(remote.location)")
        }
        return try open(remote: remote, cacheRoot: cacheRoot, keys: secret.map { secret in { @Sendable in secret } })
    }

    static func keyBlobKey(_ keyId: String) -> BlobKey { BlobKey(validated: "keys/\(keyId).json") }

    /// The key files in a bucket (any that does not parse is left out: another may open).
    static func bucketKeyFiles(_ remote: any BlobStore) throws -> [KeyFile] {
        try remote.listAll(prefix: "keys/").compactMap { blob in
            guard blob.key.path.hasSuffix(".json") else { return nil }
            return try? KeyFile.decode(try remote.read(blob.key).bytes, file: "\(remote.location)/\(blob.key)")
        }
    }

    /// The key files in a directory (any that does not parse is left out).
    static func localKeyFiles(_ root: String) throws -> [KeyFile] {
        let directory = root + "/keys"
        guard FileSystem.exists(directory) else { return [] }
        return try FileSystem.listDirectory(directory).filter { $0.hasSuffix(".json") }.compactMap { name in
            try? KeyFile.decode(try FileSystem.readFile(directory + "/" + name), file: directory + "/" + name)
        }
    }

    static func subdirectories(of root: String) -> [String] {
        ["packs", "index", "fixed", "snapshots", "disks", "locks", "tmp"].map { root + "/" + $0 }
    }

    /// Opens an existing repository.
    public static func open(at path: String, keys: KeyProvider? = nil) throws -> Repository {
        let root = FileSystem.absolutePath(path)
        let configPath = root + "/config.json"
        guard FileSystem.exists(configPath) else {
            throw StoreError(.repositoryNotFound, "no disksnap repository at \(root) (run 'disksnap --repo \(path) init' or 'create')")
        }
        let (config, unlocked) = try readConfig(try FileSystem.readFile(configPath), file: configPath, location: root,
                                                keyFiles: { try localKeyFiles(root) }, keys: keys)
        for directory in subdirectories(of: root) where !FileSystem.exists(directory) {
            throw FormatError(file: directory, "directory is missing")
        }
        return Repository(root: root, config: config, unlocked: unlocked)
    }

    /// Creates a repository. The directories come first (and an encrypted repository's first
    /// key file) and `config.json` last, published with link(2) so that of two racing inits
    /// exactly one wins.
    public static func initialize(at path: String, config: RepositoryConfig, secret: KeySecret? = nil,
                                  sharingChunkIdsOf other: MasterKeys? = nil) throws -> Repository {
        let root = FileSystem.absolutePath(path)
        try FileSystem.makeDirectories(root)
        for directory in subdirectories(of: root) { try FileSystem.makeDirectory(directory) }
        let configPath = root + "/config.json"
        if FileSystem.exists(configPath) {
            throw StoreError(.repositoryExists, "a disksnap repository already exists at \(root)")
        }
        let (bytes, key) = try newConfig(config, secret: secret, sharingChunkIdsOf: other)
        if let key {
            try FileSystem.makeDirectory(root + "/keys")
            try FileSystem.writeAtomically(RecordJSON.encode(key), to: "\(root)/keys/\(key.keyId).json", temporaryDirectory: root + "/tmp")
            try FileSystem.syncDirectory(root + "/keys")
        }
        let temporary = root + "/tmp/" + FileSystem.uniqueTemporaryName(for: configPath)
        try FileSystem.writeAtomically(bytes, to: temporary, temporaryDirectory: root + "/tmp")
        let linked = Result { () throws(SystemError) in try FileSystem.link(temporary, to: configPath) }
        try? FileSystem.removeIfExists(temporary)
        if case .failure(let error) = linked {
            if let key { try? FileSystem.removeIfExists("\(root)/keys/\(key.keyId).json") }  // names a repository that lost
            if error.code == "IO.Exists" {
                throw StoreError(.repositoryExists, "a disksnap repository already exists at \(root)")
            }
            throw error
        }
        try FileSystem.syncDirectory(root)
        return try open(at: root, keys: secret.map { secret in { @Sendable in secret } })
    }

    /// Opens the repository, creating it with the default settings when nothing is there yet.
    public static func openOrInitialize(at path: String, keys: KeyProvider? = nil) throws -> Repository {
        if FileSystem.exists(FileSystem.absolutePath(path) + "/config.json") { return try open(at: path, keys: keys) }
        do {
            return try initialize(at: path, config: RepositoryConfig(chunkSize: .default, compression: .default))
        } catch let error as StoreError where error.kind == .repositoryExists {
            return try open(at: path, keys: keys)  // another process initialized it first
        }
    }

    /// Writes a small file atomically inside the repository.
    public func publish(_ bytes: [UInt8], to path: String) throws {
        try FileSystem.writeAtomically(bytes, to: path, temporaryDirectory: temporaryDirectory)
    }

    // MARK: Locks
    //
    // Each lock is a flock on `locks/<name>.lock`; in a bucket also a lease there, which
    // every host sees (`Lease.take`: `locks/<name>.lease` for an exclusive holder,
    // `locks/<name>/<random>.lease` for each shared one). docs/DESIGN.md, "Locking".

    /// The repository-wide lock: shared for commands that add or read, exclusive for those
    /// that remove data others may be using (docs/DESIGN.md, "Locking").
    public func lock(_ kind: FileLock.Kind, for command: String) throws -> HeldLock {
        guard let lock = try take("repository", kind == .shared ? .shared : .exclusive, wait: false) else {
            throw StoreError(.repositoryLocked, "repository \(location) is locked by another disksnap process; '\(command)' needs it \(kind == .exclusive ? "alone" : "not exclusively held")")
        }
        return lock
    }

    /// The catalog lock: held for the milliseconds in which rules are checked against the
    /// records and a new record is written, so that two creates cannot both pass a quota.
    /// Waited for. In a bucket the cache's records, disks and gc state are then brought up to
    /// date, so that the rules see every host's latest writes.
    public func lockCatalog() throws -> HeldLock {
        let lock = try take("catalog", .single, wait: true)!
        if let remote { try RepositoryCache.synchronize(remote, root: root, .catalog) }
        return lock
    }

    /// Held shared by every command that reads packs (restore, diff, mount, export, check),
    /// for as long as it reads; waited for. gc takes it exclusive (`tryExcludeReaders`),
    /// without waiting, for the moments in which it replaces index segments and removes
    /// packs. In a bucket the cache's segments are then brought up to date: a gc on another
    /// host may have replaced them since the repository was opened (the open synced the rest).
    public func readersLock() throws -> HeldLock {
        let lock = try take("readers", .shared, wait: true)!
        if let remote { try RepositoryCache.synchronize(remote, root: root, .index) }
        return lock
    }

    /// The readers lock, exclusive, without waiting; nil while anything reads packs. In a
    /// bucket the cache is then brought up to date: the segments about to be replaced must
    /// include those other hosts' creates published since the repository was opened.
    public func tryExcludeReaders() throws -> HeldLock? {
        guard let lock = try take("readers", .exclusive, wait: false) else { return nil }
        if let remote { try RepositoryCache.synchronize(remote, root: root) }
        return lock
    }

    /// A named exclusive lock (a snapshot in creation, a disk being read, gc), without
    /// waiting; nil when held here or, in a bucket, by a live process anywhere.
    public func tryLock(name: String) throws -> HeldLock? { try take(name, .single, wait: false) }

    /// This host's flock first, then the lease; waiting (flock, then polling the lease from
    /// 50 ms up to 1 s apart) or not. A creation's lease and shared ones are removed on release.
    private func take(_ name: String, _ mode: Lease.Mode, wait: Bool) throws -> HeldLock? {
        let path = "\(locksDirectory)/\(name).lock"
        let kind: FileLock.Kind = mode == .shared ? .shared : .exclusive
        let file: FileLock
        if wait {
            file = try FileLock.acquire(path: path, kind: kind)
        } else {
            guard let taken = try FileLock.tryAcquire(path: path, kind: kind) else { return nil }
            file = taken
        }
        guard let remote else { return HeldLock(file: file, lease: nil, removeOnRelease: false) }
        var pause: UInt32 = 50_000
        while true {
            if let lease = try Lease.take(lock: name, mode, in: remote, purpose: name, duration: HeldLock.leaseMilliseconds,
                                          skew: HeldLock.skewMilliseconds) {
                return HeldLock(file: file, lease: lease, removeOnRelease: mode == .shared || name.hasPrefix("create-"))
            }
            guard wait else { return nil }
            usleep(pause)
            pause = min(pause * 2, 1_000_000)
        }
    }

    static func leaseKey(_ name: String) -> BlobKey { BlobKey(validated: "locks/\(name).lease") }

    /// True while some live process holds the named lock; false when its file is gone or the
    /// lock is free. A lock that cannot be probed (its file cannot be opened, flock fails:
    /// EMFILE, EACCES, EISDIR, ...) is no answer: that throws `Repository.LockUnknown`, and
    /// every caller reads it as "held" (gc stops, delete refuses, a record stays
    /// `progressing`), never as "free".
    /// In a bucket, a lock free on this host is held while its lease is live on any host
    /// (a lease that cannot be read or decoded, or a bucket that does not answer, is no
    /// answer either: `Repository.LockUnknown`).
    public func isLockHeld(name: String) throws(StoreError) -> Bool {
        let path = "\(locksDirectory)/\(name).lock"
        if FileSystem.exists(path) {
            do {
                if try FileLock.tryAcquire(path: path, kind: .exclusive) == nil { return true }
                // A creation's lock is taken once, by one process: its file here means this
                // host ran it, and free it means that process is gone, whatever its lease says.
                if name.hasPrefix("create-") { return false }
            } catch {
                if error.errno != ENOENT {  // ENOENT: removed by its owner since the check
                    throw StoreError(.lockUnknown, "cannot tell whether lock \(path) is held: \(error.message)")
                }
            }
        }
        guard let remote else { return false }
        return try Lease.state(of: Self.leaseKey(name), in: remote, now: Lease.now(), skew: HeldLock.skewMilliseconds).holder != nil
    }

    /// Removes the leases of creations whose holders are gone (a killed create leaves its
    /// lease behind; once run out it says nothing `isLockHeld` would not say without it).
    /// Returns how many. Nothing to do for a local repository.
    @discardableResult
    public func removeDeadCreationLeases() throws -> Int {
        guard let remote else { return 0 }
        var removed = 0
        for blob in try remote.listAll(prefix: "locks/") {
            let name = blob.key.path.dropFirst("locks/".count)
            guard name.hasPrefix("create-"), name.hasSuffix(".lease"), !name.contains("/") else { continue }
            do {
                guard try Lease.state(of: blob.key, in: remote, now: Lease.now(), skew: HeldLock.skewMilliseconds).holder == nil else { continue }
            } catch {
                continue  // unreadable: left alone
            }
            try remote.delete(blob.key)
            removed += 1
        }
        return removed
    }

    // MARK: Objects
    //
    // Every write, removal and listing of a repository object goes through the methods
    // below, and packs are read through `openPack` (docs/DESIGN.md, "Repository objects"):
    // the one place a second backend (a bucket, with this directory as its cache) changes.
    // Everything else reads the metadata files under `root` directly.

    /// Publishes a snapshot record (atomically: a reader sees the old or the new one).
    /// `localOnly`: a progress update of a running create, which a bucket is not asked to
    /// store four times a second; the cache's copy has it, the next full write takes it along.
    public func writeRecord(_ bytes: [UInt8], _ id: SnapshotID, localOnly: Bool = false) throws {
        let key = "snapshots/\(id.rawValue).json"
        if localOnly && remote != nil {
            try FileSystem.writeAtomically(try sealed(bytes, key), to: recordPath(id), temporaryDirectory: temporaryDirectory)
            return
        }
        try writeMutable(bytes, key: key, path: recordPath(id))
    }

    // MARK: Sealing
    //
    // In an encrypted repository every object is sealed here on its way out and opened here
    // on its way in; its context (what it is and where: the key it is stored under) is bound
    // into it, so an object moved to another name does not open.

    /// `bytes` as stored under `key`: sealed in an encrypted repository.
    private func sealed(_ bytes: [UInt8], _ key: String) throws -> [UInt8] {
        guard let sealer else { return bytes }
        return try sealer.seal(bytes, context: Self.objectContext(key))
    }

    static func objectContext(_ key: String) -> Sealer.Context { Sealer.Context(kind: "object", id: key) }

    /// A small metadata object under `root` (a record, a disk record, the gc state) as
    /// written: read, and opened in an encrypted repository (`Repository.Corrupt` when it
    /// does not authenticate).
    public func readObject(_ path: String) throws -> [UInt8] {
        let bytes = try FileSystem.readFile(path)
        guard let sealer else { return bytes }
        do {
            return try sealer.open(bytes, context: Self.objectContext(relativeKey(path)), what: path)
        } catch {
            throw FormatError(file: path, "does not authenticate (changed, truncated, or sealed for another place)")  // damaged, as any record that does not parse
        }
    }

    /// A file of this host's under the repository's directory (`api/`: a server's access
    /// keys and policies; in a bucket, the cache's), written atomically, mode 0600, and
    /// sealed in an encrypted repository as the objects are (read back with `readObject`).
    public func writeLocalObject(_ bytes: [UInt8], to path: String) throws {
        let directory = FileSystem.directoryName(of: path)
        if !FileSystem.exists(directory) { try FileSystem.makeDirectory(directory, permissions: 0o700) }
        try FileSystem.writeAtomically(try sealed(bytes, relativeKey(path)), to: path, temporaryDirectory: directory)
    }

    /// `snapshots/x.json` for `<root>/snapshots/x.json`.
    private func relativeKey(_ path: String) -> String {
        precondition(path.hasPrefix(root + "/"), "\(path) lies outside the repository")
        return String(path.dropFirst(root.count + 1))
    }

    /// An index segment or fixed index (`key`, e.g. `index/<name>.idx`) for reading: the
    /// file, or in an encrypted repository its pages opened as they are read.
    private func openPaged(_ key: String) throws -> any RandomAccessReading {
        let file = try OpenFile(path: root + "/" + key)
        guard let sealer else { return file }
        return try SealedFileReader(file: file, sealer: sealer, context: Self.objectContext(key))
    }

    /// A finished work-area file about to be published as `key`: itself, or in an encrypted
    /// repository a sealed copy beside it (the plain one removed).
    private func sealedFile(_ path: String, _ key: String) throws -> String {
        guard let sealer else { return path }
        let sealedPath = path + ".sealed"
        try? FileSystem.removeIfExists(sealedPath)
        try sealer.sealFile(path, to: sealedPath, context: Self.objectContext(key))
        try FileSystem.removeIfExists(path)
        return sealedPath
    }

    /// An index segment (a name from `indexSegmentNames`), for reading.
    public func openSegment(_ name: String) throws -> any RandomAccessReading { try openPaged("index/\(name)") }

    /// A snapshot's fixed index, for reading; `IO.NotFound` when it is absent.
    public func openFixedIndex(_ id: String) throws -> any RandomAccessReading { try openPaged("fixed/\(id).fidx") }

    /// The sealer of a pack's blocks and table of contents: `pack-block/<pack>/<offset>`, `pack-toc/<pack>`.
    public static func blockContext(_ pack: PackID, offset: UInt64) -> Sealer.Context {
        Sealer.Context(kind: "pack-block", id: "\(pack.hex)/\(offset)")
    }

    public static func tocContext(_ pack: PackID) -> Sealer.Context { Sealer.Context(kind: "pack-toc", id: pack.hex) }

    // MARK: Keys

    /// The key files of an encrypted repository.
    public func keyFiles() throws -> [KeyFile] {
        if let remote { return try Self.bucketKeyFiles(remote) }
        return try Self.localKeyFiles(root)
    }

    /// Adds a key file (create-only).
    public func addKeyFile(_ key: KeyFile) throws {
        let bytes = RecordJSON.encode(key)
        if let remote {
            try remote.create(Self.keyBlobKey(key.keyId), bytes)
            return
        }
        try FileSystem.makeDirectory(keysDirectory)
        let path = "\(keysDirectory)/\(key.keyId).json"
        guard !FileSystem.exists(path) else { throw StoreError(.repositoryExists, "key \(key.keyId) exists already") }
        try publish(bytes, to: path)
        try FileSystem.syncDirectory(keysDirectory)
    }

    /// Rewrites a key file in place (a changed passphrase: the same id, the same master keys).
    public func replaceKeyFile(_ key: KeyFile) throws {
        let bytes = RecordJSON.encode(key)
        if let remote {
            let blob = Self.keyBlobKey(key.keyId)
            try remote.replace(blob, bytes, ifVersion: try remote.info(blob)?.version)
            return
        }
        try publish(bytes, to: "\(keysDirectory)/\(key.keyId).json")
        try FileSystem.syncDirectory(keysDirectory)
    }

    public func removeKeyFile(_ keyId: String) throws {
        if let remote {
            try remote.delete(Self.keyBlobKey(keyId))
            return
        }
        try FileSystem.removeIfExists("\(keysDirectory)/\(keyId).json")
        try FileSystem.syncDirectory(keysDirectory)
    }

    /// Removes a snapshot record, durably (`fsync(snapshots/)`).
    public func removeRecord(_ id: SnapshotID) throws {
        try removeObject(key: "snapshots/\(id.rawValue).json", path: recordPath(id))
    }

    /// A small mutable object (sealed in an encrypted repository): locally published
    /// atomically; in a bucket compare-and-swap on the version of the cached copy (none:
    /// create-only), then the copy.
    private func writeMutable(_ plain: [UInt8], key: String, path: String) throws {
        let bytes = try sealed(plain, key)
        guard let remote else { return try publish(bytes, to: path) }
        let version = try remote.replace(BlobKey(validated: key), bytes, ifVersion: RepositoryCache.cachedVersion(path))
        try RepositoryCache.store(bytes, version: version, at: path, temporaryDirectory: temporaryDirectory)
    }

    private func removeObject(key: String, path: String) throws {
        if let remote {
            try remote.delete(BlobKey(validated: key))
            try RepositoryCache.remove(path)
            return
        }
        try FileSystem.removeIfExists(path)
        try FileSystem.syncDirectory(FileSystem.directoryName(of: path))
    }

    /// Publishes a finished local file as an immutable object: locally renamed into place;
    /// to a bucket uploaded create-only, then (`cache`) renamed into the cache or removed.
    private func publishFile(_ file: String, key: String, path: String, cache: Bool) throws {
        if let remote {
            let version = try remote.create(BlobKey(validated: key), fromFile: file)
            if cache {
                try FileSystem.rename(file, to: path)
                try FileSystem.writeAtomically(Array(version.tag.utf8), to: RepositoryCache.versionPath(path), temporaryDirectory: temporaryDirectory)
            } else {
                try FileSystem.removeIfExists(file)
            }
            return
        }
        try FileSystem.rename(file, to: path)
    }

    /// The ids of every record file, whatever its content.
    public func recordIDs() throws -> [String] {
        try FileSystem.listDirectory(snapshotsDirectory).filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }
    }

    public func writeDisk(_ bytes: [UInt8], _ id: DiskID) throws {
        try writeMutable(bytes, key: "disks/\(id.rawValue).json", path: diskPath(id))
    }

    public func removeDisk(_ id: DiskID) throws {
        try removeObject(key: "disks/\(id.rawValue).json", path: diskPath(id))
    }

    public func diskFileNames() throws -> [String] {
        try FileSystem.listDirectory(disksDirectory).filter { $0.hasSuffix(".json") }
    }

    public func writeGCState(_ bytes: [UInt8]) throws { try writeMutable(bytes, key: "gc.json", path: gcStatePath) }

    public func removeGCState() throws { try removeObject(key: "gc.json", path: gcStatePath) }

    /// Publishes a finished fixed index (a synced work-area file on this filesystem).
    public func publishFixedIndex(_ path: String, _ id: SnapshotID) throws {
        let key = "fixed/\(id.rawValue).fidx"
        try publishFile(try sealedFile(path, key), key: key, path: fixedIndexPath(id), cache: true)
        try FileSystem.syncDirectory(fixedIndexDirectory)
    }

    /// Removes a fixed index, durably; returns the bytes it held (0 if it was absent).
    @discardableResult
    public func removeFixedIndex(_ id: String) throws -> UInt64 {
        let path = "\(fixedIndexDirectory)/\(id).fidx"
        let size = try FileSystem.statusIfExists(path)?.size ?? 0
        try removeObject(key: "fixed/\(id).fidx", path: path)
        return size
    }

    /// The ids (file names without `.fidx`) of every fixed index.
    public func fixedIndexIDs() throws -> [String] {
        try FileSystem.listDirectory(fixedIndexDirectory).filter { $0.hasSuffix(".fidx") }.map { String($0.dropLast(5)) }
    }

    /// Publishes closed, synced packs from a work area (`<area>/<id>.pack`), then makes
    /// their names durable (`fsync(packs/)`).
    public func publishPacks(_ ids: [PackID], from area: TemporaryArea) throws {
        for id in ids { try publishFile(area.path(id.hex + ".pack"), key: "packs/\(id.hex).pack", path: packPath(id), cache: false) }
        if remote == nil { try FileSystem.syncDirectory(packsDirectory) }
    }

    public func packIDs() throws -> [PackID] {
        if let remote {
            return try remote.listAll(prefix: "packs/").compactMap { blob in
                let name = blob.key.path.dropFirst("packs/".count)
                return name.hasSuffix(".pack") ? PackID(hex: String(name.dropLast(5))) : nil
            }
        }
        return try FileSystem.listDirectory(packsDirectory).compactMap { name in
            name.hasSuffix(".pack") ? PackID(hex: String(name.dropLast(5))) : nil
        }
    }

    /// A pack's size in bytes, nil if it is absent.
    public func packSize(_ id: PackID) throws -> UInt64? {
        if let remote { return try remote.info(BlobKey(validated: "packs/\(id.hex).pack"))?.size }
        return try FileSystem.statusIfExists(packPath(id))?.size
    }

    /// A pack, opened for reading; `IO.NotFound` (`BlobStore.NotFound` in a bucket) if it is absent.
    public func openPack(_ id: PackID) throws -> any PackData {
        if let remote { return try BucketPack(store: remote, key: BlobKey(validated: "packs/\(id.hex).pack")) }
        return try OpenFile(path: packPath(id))
    }

    /// Removes packs, one at a time, then makes it durable; returns the bytes removed and
    /// how many were there.
    public func removePacks(_ ids: some Sequence<PackID>) throws -> (bytes: UInt64, count: Int) {
        var bytes: UInt64 = 0, count = 0
        if let remote {
            for id in ids {
                let key = BlobKey(validated: "packs/\(id.hex).pack")
                if let info = try remote.info(key) {
                    try remote.delete(key)
                    bytes += info.size
                    count += 1
                }
            }
            return (bytes, count)
        }
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
        let key = "index/\(name).idx"
        try publishFile(try sealedFile(path, key), key: key, path: "\(indexDirectory)/\(name).idx", cache: true)
        try FileSystem.syncDirectory(indexDirectory)
    }

    /// The path of a segment named by `indexSegmentNames`, for reading.
    public func segmentPath(_ name: String) -> String { "\(indexDirectory)/\(name)" }

    /// Removes segments (names from `indexSegmentNames`), then makes it durable.
    public func removeSegments(_ names: [String]) throws {
        if let remote {
            for name in names {
                try remote.delete(BlobKey(validated: "index/\(name)"))
                try RepositoryCache.remove(segmentPath(name))
            }
            return
        }
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
    /// Whether a read costs a round trip (a GET): readers then read whole blocks.
    var eachReadIsCostly: Bool { get }
}

extension PackData {
    public var eachReadIsCostly: Bool { false }
}

extension OpenFile: PackData {
    public var name: String { path }
}
