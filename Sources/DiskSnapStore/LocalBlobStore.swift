import DiskSnapSys
import DiskSnapFormat
#if canImport(Glibc)
import Glibc
#endif

/// A blob store in a directory: key `packs/ab.pack` is the file `ROOT/packs/ab.pack`, so a
/// repository's layout is what it always was. Blobs are written into a work area of this
/// process under `ROOT/tmp/` (removed by the next store when its owner is gone), fsynced,
/// and published with `link(2)`, which fails if the name exists: create-only, atomic. A
/// replace takes `ROOT/locks/blobs.lock` for the compare and the `rename(2)`.
/// A version is the file's inode, ctime and size: every publication makes a new inode.
public final class LocalBlobStore: BlobStore {
    public let root: String
    public var location: String { root }
    private let areaLock: FileLock
    private let area: String

    public init(root: String) throws {
        self.root = root
        let temporary = root + "/tmp"
        try FileSystem.makeDirectories(temporary)
        try FileSystem.makeDirectories(root + "/locks")
        TemporaryArea.removeAbandoned(in: temporary)
        let name = "b-" + RandomUUID.generate()
        guard let lock = try FileLock.tryAcquire(path: "\(temporary)/\(name).lock", kind: .exclusive) else {
            throw BlobStoreError(.failed, "work area lock \(temporary)/\(name).lock is held")
        }
        area = "\(temporary)/\(name)"
        try FileSystem.makeDirectory(area)
        areaLock = lock
    }

    deinit {
        for name in (try? FileSystem.listDirectory(area)) ?? [] { try? FileSystem.removeIfExists("\(area)/\(name)") }
        try? FileSystem.removeDirectory(area)
        try? FileSystem.removeIfExists(areaLock.path)
    }

    public func path(_ key: BlobKey) -> String { "\(root)/\(key.path)" }

    private func temporaryPath(for key: BlobKey) -> String { "\(area)/\(FileSystem.uniqueTemporaryName(for: key.path))" }

    private static func version(_ status: FileStatus) -> BlobVersion {
        BlobVersion("\(status.inode)-\(status.changeTime.seconds).\(status.changeTime.nanoseconds)-\(status.size)")
    }

    /// Writes a temporary file with `bytes`, synced; returns its path.
    private func stage(_ bytes: [UInt8], for key: BlobKey) throws -> String {
        let temporary = temporaryPath(for: key)
        do {
            let file = try OpenFile(path: temporary, mode: [.writeOnly, .create, .exclusive], permissions: 0o600)
            try file.write(bytes, at: 0)
            try file.sync()
        } catch {
            try? FileSystem.removeIfExists(temporary)
            throw BlobStoreError.from(error, key: key)
        }
        return temporary
    }

    /// Links a staged file to the key's name (create-only), then drops the staging name.
    fileprivate func publish(staged temporary: String, as key: BlobKey) throws -> BlobVersion {
        defer { try? FileSystem.removeIfExists(temporary) }
        let target = path(key)
        do {
            try FileSystem.makeDirectories(FileSystem.directoryName(of: target))
            try FileSystem.link(temporary, to: target)
            // The staging name goes first: its unlink changes the inode's ctime, the version.
            try FileSystem.removeIfExists(temporary)
            try FileSystem.syncDirectory(FileSystem.directoryName(of: target))
            return Self.version(try FileSystem.status(target))
        } catch {
            throw BlobStoreError.from(error, key: key)
        }
    }

    @discardableResult
    public func create(_ key: BlobKey, _ bytes: [UInt8]) throws -> BlobVersion {
        try publish(staged: try stage(bytes, for: key), as: key)
    }

    @discardableResult
    public func replace(_ key: BlobKey, _ bytes: [UInt8], ifVersion expected: BlobVersion?) throws -> BlobVersion {
        let temporary = try stage(bytes, for: key)
        defer { try? FileSystem.removeIfExists(temporary) }
        let lock: FileLock
        do { lock = try FileLock.acquire(path: root + "/locks/blobs.lock", kind: .exclusive) } catch { throw BlobStoreError.from(error, key: key) }
        defer { withExtendedLifetime(lock) {} }
        let target = path(key)
        let current: BlobVersion?
        do { current = try FileSystem.statusIfExists(target).map(Self.version) } catch { throw BlobStoreError.from(error, key: key) }
        guard current == expected else {
            throw BlobStoreError(.versionMismatch, "\(key) is \(current.map { "at version \($0)" } ?? "absent"), not \(expected.map { "at version \($0)" } ?? "absent")")
        }
        if expected == nil { return try publish(staged: temporary, as: key) }
        do {
            try FileSystem.rename(temporary, to: target)
            try FileSystem.syncDirectory(FileSystem.directoryName(of: target))
            return Self.version(try FileSystem.status(target))
        } catch {
            throw BlobStoreError.from(error, key: key)
        }
    }

    public func writer(for key: BlobKey) throws -> any BlobWriter {
        let temporary = temporaryPath(for: key)
        do {
            return LocalBlobWriter(store: self, key: key, temporary: temporary,
                                   file: try OpenFile(path: temporary, mode: [.writeOnly, .create, .exclusive], permissions: 0o600))
        } catch {
            throw BlobStoreError.from(error, key: key)
        }
    }

    public func read(_ key: BlobKey) throws -> (bytes: [UInt8], version: BlobVersion) {
        do {
            let file = try OpenFile(path: path(key))
            let status = try file.status()
            return (try file.readBytes(count: Int(status.size), at: 0), Self.version(status))
        } catch {
            throw BlobStoreError.from(error, key: key)
        }
    }

    public func read(_ key: BlobKey, range: Range<UInt64>) throws -> [UInt8] {
        do {
            let file = try OpenFile(path: path(key))
            let size = try file.status().size
            if range.isEmpty { return [] }
            guard range.lowerBound < size else {
                throw BlobStoreError(.invalidRange, "\(key) has \(size) bytes: no byte at \(range.lowerBound)")
            }
            return try file.readBytes(count: Int(min(range.upperBound, size) - range.lowerBound), at: range.lowerBound)
        } catch let error as SystemError {
            throw BlobStoreError.from(error, key: key)
        }
    }

    public func info(_ key: BlobKey) throws -> BlobInfo? {
        do {
            return try FileSystem.statusIfExists(path(key)).map { BlobInfo(key: key, size: $0.size, version: Self.version($0)) }
        } catch {
            throw BlobStoreError.from(error, key: key)
        }
    }

    public func list(prefix: String, after: BlobKey?, limit: Int) throws -> BlobPage {
        // The directory the prefix is in, walked below; names that are no key are not blobs.
        let directoryPart = prefix.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        var keys: [BlobKey] = []
        func walk(_ relative: String) throws {
            let absolute = relative.isEmpty ? root : "\(root)/\(relative)"
            let names: [String]
            do {
                names = try FileSystem.listDirectory(absolute)
            } catch {
                if error.errno == ENOENT || error.errno == ENOTDIR { return }
                throw BlobStoreError(.failed, error.message)
            }
            for name in names {
                let child = relative.isEmpty ? name : "\(relative)/\(name)"
                guard let status = try? FileSystem.statusIfExists("\(root)/\(child)") else { continue }
                if status.isDirectory {
                    if child.hasPrefix(prefix) || prefix.hasPrefix(child + "/") { try walk(child) }
                } else if status.isRegularFile, child.hasPrefix(prefix), let key = try? BlobKey(child), after.map({ $0 < key }) ?? true {
                    keys.append(key)
                }
            }
        }
        try walk(directoryPart)
        keys.sort()
        let page = keys.prefix(max(0, limit))
        var blobs: [BlobInfo] = []
        for key in page {
            // Deleted meanwhile: not listed.
            if let info = try info(key) { blobs.append(info) }
        }
        return BlobPage(blobs: blobs, truncated: keys.count > page.count)
    }

    public func delete(_ key: BlobKey) throws {
        do {
            try FileSystem.removeIfExists(path(key))
            try FileSystem.syncDirectory(FileSystem.directoryName(of: path(key)))
        } catch {
            if error.errno != ENOENT { throw BlobStoreError.from(error, key: key) }
        }
    }
}

final class LocalBlobWriter: BlobWriter {
    private let store: LocalBlobStore
    private let key: BlobKey
    private let temporary: String
    private var file: OpenFile?
    private var offset: UInt64 = 0

    init(store: LocalBlobStore, key: BlobKey, temporary: String, file: OpenFile) {
        self.store = store
        self.key = key
        self.temporary = temporary
        self.file = file
    }

    deinit { abort() }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard let file else { throw BlobStoreError(.failed, "the writer of \(key) is closed") }
        do { try file.write(bytes, at: offset) } catch { throw BlobStoreError.from(error, key: key) }
        offset += UInt64(bytes.count)
    }

    func commit() throws -> BlobVersion {
        guard let file else { throw BlobStoreError(.failed, "the writer of \(key) is closed") }
        do { try file.sync() } catch { throw BlobStoreError.from(error, key: key) }
        self.file = nil
        return try store.publish(staged: temporary, as: key)
    }

    func abort() {
        file = nil
        try? FileSystem.removeIfExists(temporary)
    }
}
