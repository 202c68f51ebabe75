import Synchronization

/// A blob store in memory, for unit tests only: the same contract as the others (it passes
/// the conformance suite), nothing durable.
public final class MemoryBlobStore: BlobStore {
    private struct Blob {
        var bytes: [UInt8]
        var version: BlobVersion
    }

    private let blobs = Mutex<[BlobKey: Blob]>([:])
    private let counter = Atomic<UInt64>(0)
    public let location = "memory"

    public init() {}

    private func nextVersion() -> BlobVersion { BlobVersion("m\(counter.add(1, ordering: .relaxed).newValue)") }

    @discardableResult
    public func create(_ key: BlobKey, _ bytes: [UInt8]) throws -> BlobVersion {
        let version = nextVersion()
        try blobs.withLock { (all: inout [BlobKey: Blob]) throws(BlobStoreError) in
            guard all[key] == nil else { throw BlobStoreError(.alreadyExists, "\(key) exists already") }
            all[key] = Blob(bytes: bytes, version: version)
        }
        return version
    }

    @discardableResult
    public func replace(_ key: BlobKey, _ bytes: [UInt8], ifVersion expected: BlobVersion?) throws -> BlobVersion {
        let version = nextVersion()
        try blobs.withLock { (all: inout [BlobKey: Blob]) throws(BlobStoreError) in
            guard all[key]?.version == expected else {
                throw BlobStoreError(.versionMismatch, "\(key) is not at version \(expected.map(\.tag) ?? "absent")")
            }
            all[key] = Blob(bytes: bytes, version: version)
        }
        return version
    }

    public func writer(for key: BlobKey) throws -> any BlobWriter { BufferedBlobWriter(store: self, key: key) }

    public func read(_ key: BlobKey) throws -> (bytes: [UInt8], version: BlobVersion) {
        guard let blob = blobs.withLock({ $0[key] }) else { throw BlobStoreError(.notFound, "\(key) does not exist") }
        return (blob.bytes, blob.version)
    }

    public func read(_ key: BlobKey, range: Range<UInt64>) throws -> [UInt8] {
        let bytes = try read(key).bytes
        if range.isEmpty { return [] }
        guard range.lowerBound < UInt64(bytes.count) else {
            throw BlobStoreError(.invalidRange, "\(key) has \(bytes.count) bytes: no byte at \(range.lowerBound)")
        }
        return Array(bytes[Int(range.lowerBound)..<Int(min(range.upperBound, UInt64(bytes.count)))])
    }

    public func info(_ key: BlobKey) throws -> BlobInfo? {
        blobs.withLock { $0[key] }.map { BlobInfo(key: key, size: UInt64($0.bytes.count), version: $0.version) }
    }

    public func list(prefix: String, after: BlobKey?, limit: Int) throws -> BlobPage {
        let matching = blobs.withLock { all in
            all.filter { entry in entry.key.path.hasPrefix(prefix) && (after.map { $0 < entry.key } ?? true) }
                .map { BlobInfo(key: $0.key, size: UInt64($0.value.bytes.count), version: $0.value.version) }
        }.sorted { $0.key < $1.key }
        return BlobPage(blobs: Array(matching.prefix(max(0, limit))), truncated: matching.count > max(0, limit))
    }

    public func delete(_ key: BlobKey) throws {
        _ = blobs.withLock { $0.removeValue(forKey: key) }
    }
}

/// Buffers a blob in memory and creates it at `commit` (create-only): for stores whose
/// create is one request anyway (memory; S3 up to its single-PUT size).
public final class BufferedBlobWriter: BlobWriter {
    private let store: any BlobStore
    private let key: BlobKey
    private var bytes: [UInt8]? = []

    public init(store: any BlobStore, key: BlobKey) {
        self.store = store
        self.key = key
    }

    public func append(_ buffer: UnsafeRawBufferPointer) throws {
        guard bytes != nil else { throw BlobStoreError(.failed, "the writer of \(key) is closed") }
        bytes! += buffer
    }

    public func commit() throws -> BlobVersion {
        guard let bytes else { throw BlobStoreError(.failed, "the writer of \(key) is closed") }
        self.bytes = nil
        return try store.create(key, bytes)
    }

    public func abort() { bytes = nil }
}
