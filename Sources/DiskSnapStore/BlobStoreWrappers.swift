import DiskSnapSys
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// How long to wait before retry N (0-based): exponential from `base`, capped, with "equal
/// jitter" (half fixed, half random) so that many clients that failed together do not
/// retry together. Pure: `random` is in [0, 1).
public struct RetryPolicy: Sendable, Equatable {
    public var attempts: Int
    public var base: Double
    public var cap: Double

    public init(attempts: Int = 6, base: Double = 0.1, cap: Double = 5) {
        self.attempts = attempts
        self.base = base
        self.cap = cap
    }

    public func delay(beforeRetry retry: Int, random: Double) -> Double {
        let exponential = min(cap, base * Double(1 << min(retry, 30)))
        return exponential / 2 + exponential / 2 * random
    }
}

/// Retries what a backend reports as transient (`BlobStoreError.isTransient`: 500, 503,
/// SlowDown, a reset connection, a timeout), bounded by the policy; anything else at once.
///
/// A write that failed transiently may have been done anyway (the answer was lost). So a
/// retried `create` that then finds the key, or a retried `replace` that then finds another
/// version, reads the blob: holding exactly our bytes, it was our write, and succeeds.
public final class RetryingBlobStore: BlobStore {
    public let inner: any BlobStore
    public let policy: RetryPolicy
    private let sleep: @Sendable (Double) -> Void
    public var location: String { inner.location }

    public init(_ inner: any BlobStore, policy: RetryPolicy = RetryPolicy(),
                sleep: @escaping @Sendable (Double) -> Void = { usleep(UInt32(min($0, 60) * 1_000_000)) }) {
        self.inner = inner
        self.policy = policy
        self.sleep = sleep
    }

    /// Runs `body` until it succeeds, fails for good, or the attempts are spent; `retried`
    /// tells it whether an earlier attempt failed transiently.
    private func retrying<T>(_ body: (_ retried: Bool) throws -> T) throws -> T {
        var attempt = 0
        while true {
            do {
                return try body(attempt > 0)
            } catch let error as BlobStoreError where error.isTransient && attempt + 1 < policy.attempts {
                sleep(policy.delay(beforeRetry: attempt, random: Double.random(in: 0..<1)))
                attempt += 1
            }
        }
    }

    @discardableResult
    public func create(_ key: BlobKey, _ bytes: [UInt8]) throws -> BlobVersion {
        try retrying { retried in
            do {
                return try inner.create(key, bytes)
            } catch let error as BlobStoreError where retried && error.kind == .alreadyExists {
                let (stored, version) = try inner.read(key)
                guard stored == bytes else { throw error }
                return version
            }
        }
    }

    @discardableResult
    public func create(_ key: BlobKey, fromFile path: String) throws -> BlobVersion {
        try retrying { retried in
            do {
                return try inner.create(key, fromFile: path)
            } catch let error as BlobStoreError where retried && error.kind == .alreadyExists {
                // Rare (a lost answer): the file is read whole once to compare.
                let (stored, version) = try inner.read(key)
                guard let mine = try? FileSystem.readFile(path), stored == mine else { throw error }
                return version
            }
        }
    }

    @discardableResult
    public func replace(_ key: BlobKey, _ bytes: [UInt8], ifVersion expected: BlobVersion?) throws -> BlobVersion {
        try retrying { retried in
            do {
                return try inner.replace(key, bytes, ifVersion: expected)
            } catch let error as BlobStoreError where retried && error.kind == .versionMismatch {
                guard let (stored, version) = try? inner.read(key), stored == bytes else { throw error }
                return version
            }
        }
    }

    /// Not retried here: a backend's writer retries its own parts.
    public func writer(for key: BlobKey) throws -> any BlobWriter { try retrying { _ in try inner.writer(for: key) } }
    public func read(_ key: BlobKey) throws -> (bytes: [UInt8], version: BlobVersion) { try retrying { _ in try inner.read(key) } }
    public func read(_ key: BlobKey, range: Range<UInt64>) throws -> [UInt8] { try retrying { _ in try inner.read(key, range: range) } }
    public func read(_ key: BlobKey, range: Range<UInt64>, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try retrying { _ in try inner.read(key, range: range, into: buffer) }
    }
    public func info(_ key: BlobKey) throws -> BlobInfo? { try retrying { _ in try inner.info(key) } }
    public func list(prefix: String, after: BlobKey?, limit: Int) throws -> BlobPage {
        try retrying { _ in try inner.list(prefix: prefix, after: after, limit: limit) }
    }
    public func delete(_ key: BlobKey) throws { try retrying { _ in try inner.delete(key) } }
    public func delete(_ keys: [BlobKey]) throws { try retrying { _ in try inner.delete(keys) } }
}

/// Makes a backend fail on purpose, for tests: the Nth call of an operation throws, a read
/// comes back short, a write is done but its answer lost.
public final class FaultInjectingBlobStore: BlobStore {
    public enum Operation: String, Sendable, CaseIterable {
        case create, replace, writer, read, readRange, info, list, delete
    }

    public enum Fault: Sendable {
        /// The call throws `error` without reaching the backend.
        case fail(BlobStoreError)
        /// The call reaches the backend, then throws `error` (the answer was lost).
        case failAfter(BlobStoreError)
        /// A read returns only its first `bytes` bytes.
        case truncate(bytes: Int)
    }

    public let inner: any BlobStore
    public var location: String { inner.location }
    private let plan = Mutex<[Operation: [Int: Fault]]>([:])
    private let calls = Mutex<[Operation: Int]>([:])

    public init(_ inner: any BlobStore) { self.inner = inner }

    /// Call number `nth` (1-based, counted from now on) of `operation` meets `fault`.
    public func inject(_ fault: Fault, on operation: Operation, call nth: Int = 1) {
        let current = calls.withLock { $0[operation, default: 0] }
        plan.withLock { $0[operation, default: [:]][current + nth] = fault }
    }

    public func count(_ operation: Operation) -> Int { calls.withLock { $0[operation, default: 0] } }

    private func run<T>(_ operation: Operation, _ body: () throws -> T, truncate: (T, Int) -> T = { value, _ in value }) throws -> T {
        let number = calls.withLock { (all: inout [Operation: Int]) -> Int in
            all[operation, default: 0] += 1
            return all[operation]!
        }
        let fault = plan.withLock { $0[operation]?.removeValue(forKey: number) }
        switch fault {
        case .fail(let error)?: throw error
        case .failAfter(let error)?:
            _ = try body()
            throw error
        case .truncate(let bytes)?: return truncate(try body(), bytes)
        case nil: return try body()
        }
    }

    @discardableResult
    public func create(_ key: BlobKey, _ bytes: [UInt8]) throws -> BlobVersion { try run(.create) { try inner.create(key, bytes) } }
    public func create(_ key: BlobKey, fromFile path: String) throws -> BlobVersion { try run(.create) { try inner.create(key, fromFile: path) } }
    @discardableResult
    public func replace(_ key: BlobKey, _ bytes: [UInt8], ifVersion expected: BlobVersion?) throws -> BlobVersion {
        try run(.replace) { try inner.replace(key, bytes, ifVersion: expected) }
    }
    public func writer(for key: BlobKey) throws -> any BlobWriter { try run(.writer) { try inner.writer(for: key) } }
    public func read(_ key: BlobKey) throws -> (bytes: [UInt8], version: BlobVersion) {
        try run(.read, { try inner.read(key) }, truncate: { value, n in (Array(value.bytes.prefix(n)), value.version) })
    }
    public func read(_ key: BlobKey, range: Range<UInt64>) throws -> [UInt8] {
        try run(.readRange, { try inner.read(key, range: range) }, truncate: { value, n in Array(value.prefix(n)) })
    }
    public func info(_ key: BlobKey) throws -> BlobInfo? { try run(.info) { try inner.info(key) } }
    public func list(prefix: String, after: BlobKey?, limit: Int) throws -> BlobPage {
        try run(.list) { try inner.list(prefix: prefix, after: after, limit: limit) }
    }
    public func delete(_ key: BlobKey) throws { try run(.delete) { try inner.delete(key) } }
}
