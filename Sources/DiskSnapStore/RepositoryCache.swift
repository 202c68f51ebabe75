import DiskSnapSys
import DiskSnapFormat

/// A repository in a bucket keeps its metadata in a local cache (docs/DESIGN.md, "A
/// repository in a bucket"): `config.json`, `snapshots/`, `disks/`, `index/`, `fixed/` and
/// `gc.json`, each a copy of its object, laid out as a local repository is, so that every
/// reader of metadata reads files and a create never asks the bucket whether a chunk exists.
/// Packs are not cached: they are read with ranged GETs.
///
/// The bucket is the truth. At open the cache is brought up to date with one listing per
/// prefix: an object missing from the cache, or (for the mutable records, disks and gc
/// state) at another version than the copy, is downloaded; a copy whose object is gone is
/// removed. A copy's version is kept beside it in `<file>.version`. Written objects go to
/// the bucket first and then to the cache, so a cache never holds what the bucket lacks
/// except for a moment a crash may make longer (the next open removes it).
enum RepositoryCache {
    /// Prefixes whose objects are cached, and whether they change in place. `fixed/` is listed
    /// before `snapshots/`: a create's record exists from its start, before its fixed index,
    /// so every fixed index a sync copies has its record copied too, and gc's sweep never
    /// takes a new snapshot's fixed index for an orphan.
    static let prefixes: [(prefix: String, suffix: String, mutable: Bool)] = [
        ("fixed/", ".fidx", false), ("snapshots/", ".json", true), ("disks/", ".json", true), ("index/", ".idx", false),
    ]

    /// What a sync brings up to date.
    enum Scope {
        /// Everything cached (at open).
        case all
        /// Records, disks and the gc state: what the catalog lock's rules read.
        case catalog
        /// Index segments and the gc state: what a gc elsewhere changes under a reader.
        case index

        func includes(_ prefix: String, mutable: Bool) -> Bool {
            switch self {
            case .all: true
            case .catalog: mutable
            case .index: prefix == "index/"
            }
        }
    }

    static func versionPath(_ path: String) -> String { path + ".version" }

    /// The version of the cached copy at `path`, nil when there is none or it has no version.
    static func cachedVersion(_ path: String) -> BlobVersion? {
        guard FileSystem.exists(path), let bytes = try? FileSystem.readFile(versionPath(path)), !bytes.isEmpty else { return nil }
        return BlobVersion(String(decoding: bytes, as: UTF8.self))
    }

    /// Writes a cached copy and its version (the version last: a copy without one is
    /// downloaded again).
    static func store(_ bytes: [UInt8], version: BlobVersion, at path: String, temporaryDirectory: String) throws {
        try? FileSystem.removeIfExists(versionPath(path))
        try FileSystem.writeAtomically(bytes, to: path, temporaryDirectory: temporaryDirectory)
        try FileSystem.writeAtomically(Array(version.tag.utf8), to: versionPath(path), temporaryDirectory: temporaryDirectory)
    }

    static func remove(_ path: String) throws {
        try FileSystem.removeIfExists(path)
        try FileSystem.removeIfExists(versionPath(path))
    }

    /// Brings the cache at `root` up to date with `remote` (the gc state always; the rest as
    /// `scope` says). Returns how many objects were downloaded and how many stale copies removed.
    @discardableResult
    static func synchronize(_ remote: any BlobStore, root: String, _ scope: Scope = .all) throws -> (downloaded: Int, removed: Int) {
        let temporary = root + "/tmp"
        var downloaded = 0, removed = 0
        for (prefix, suffix, mutable) in prefixes where scope.includes(prefix, mutable: mutable) {
            let directory = root + "/" + String(prefix.dropLast())
            try FileSystem.makeDirectories(directory)
            var present = Set<String>()
            for blob in try remote.listAll(prefix: prefix) {
                let name = String(blob.key.path.dropFirst(prefix.count))
                guard name.hasSuffix(suffix), !name.contains("/") else { continue }
                present.insert(name)
                let path = directory + "/" + name
                if FileSystem.exists(path) {
                    if !mutable, cachedVersion(path) != nil, try FileSystem.status(path).size == blob.size { continue }
                    if mutable, cachedVersion(path) == blob.version { continue }
                }
                do {
                    let (bytes, version) = try remote.read(blob.key)
                    try store(bytes, version: version, at: path, temporaryDirectory: temporary)
                    downloaded += 1
                } catch let error as BlobStoreError where error.kind == .notFound {
                    present.remove(name)  // removed since the listing
                }
            }
            for name in try FileSystem.listDirectory(directory) where name.hasSuffix(suffix) && !present.contains(name) {
                try remove(directory + "/" + name)
                removed += 1
            }
        }
        let gcPath = root + "/gc.json"
        if let info = try remote.info(BlobKey(validated: "gc.json")) {
            if cachedVersion(gcPath) != info.version {
                let (bytes, version) = try remote.read(info.key)
                try store(bytes, version: version, at: gcPath, temporaryDirectory: temporary)
                downloaded += 1
            }
        } else if FileSystem.exists(gcPath) {
            try remove(gcPath)
            removed += 1
        }
        return (downloaded, removed)
    }
}

/// A pack in a bucket, read with ranged GETs.
final class BucketPack: PackData {
    let store: any BlobStore
    let key: BlobKey
    private let length: UInt64
    var name: String { "\(store.location)/\(key)" }
    var eachReadIsCostly: Bool { true }

    init(store: any BlobStore, key: BlobKey) throws {
        guard let info = try store.info(key) else { throw BlobStoreError(.notFound, "pack \(key) does not exist in \(store.location)") }
        self.store = store
        self.key = key
        self.length = info.size
    }

    func size() throws -> UInt64 { length }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        guard offset < length, buffer.count > 0 else { return 0 }
        return try store.read(key, range: offset..<min(length, offset + UInt64(buffer.count)), into: buffer)
    }

    func readBytes(count: Int, at offset: UInt64) throws -> [UInt8] {
        guard count > 0 else { return [] }
        let bytes = try offset < length ? store.read(key, range: offset..<offset + UInt64(count)) : []
        guard bytes.count == count else {
            throw BlobStoreError(.failed, "pack \(key) in \(store.location): \(bytes.count) bytes at \(offset), not \(count) (truncated?)")
        }
        return bytes
    }
}
