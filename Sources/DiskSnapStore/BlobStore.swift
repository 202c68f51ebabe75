import DiskSnapSys
#if canImport(Glibc)
import Glibc
#endif

/// Where a repository's files live: a directory (`LocalBlobStore`), a bucket
/// (`S3BlobStore`), memory for unit tests (`MemoryBlobStore`). Every backend passes the one
/// conformance suite (`Tests/DiskSnapTests/BlobStoreConformanceTests.swift`); the engine
/// relies on nothing else (docs/DESIGN.md, "Blob stores").
///
/// The guarantees each backend must give, all of them what S3 gives since 2020 (strong
/// read-after-write, conditional writes since 2024):
/// - A blob is seen whole or not at all; a blob created is listed and read at once.
/// - `create` is create-only: of concurrent creates of one key exactly one succeeds.
/// - `replace` is compare-and-swap on the version: of concurrent replaces from one version,
///   exactly one succeeds.
/// - Versions change with every write of a key, and only then.
public protocol BlobStore: Sendable {
    /// For messages: `/srv/repo`, `s3://bucket/prefix`.
    var location: String { get }

    /// Creates `key` with `bytes` if it does not exist; `BlobStore.AlreadyExists` if it does.
    @discardableResult
    func create(_ key: BlobKey, _ bytes: [UInt8]) throws -> BlobVersion
    /// Writes `key` if its version is `expected` (nil: if it does not exist), else
    /// `BlobStore.VersionMismatch` and nothing is written.
    @discardableResult
    func replace(_ key: BlobKey, _ bytes: [UInt8], ifVersion expected: BlobVersion?) throws -> BlobVersion
    /// Creates `key` from the local file at `path` (create-only, as `create`); a backend
    /// streams it rather than holding it in memory.
    @discardableResult
    func create(_ key: BlobKey, fromFile path: String) throws -> BlobVersion
    /// Streams a large blob; `commit` creates it create-only, `abort` leaves nothing.
    func writer(for key: BlobKey) throws -> any BlobWriter
    /// The whole blob and its version; `BlobStore.NotFound` if absent.
    func read(_ key: BlobKey) throws -> (bytes: [UInt8], version: BlobVersion)
    /// Bytes `range` of the blob, cut at its end; a non-empty range starting at or past the
    /// end (any of an empty blob) is `BlobStore.InvalidRange`, as S3's 416; an empty range is empty.
    func read(_ key: BlobKey, range: Range<UInt64>) throws -> [UInt8]
    /// The same bytes into `buffer` (at least `range.count` bytes); returns how many.
    func read(_ key: BlobKey, range: Range<UInt64>, into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Size and version, nil if absent.
    func info(_ key: BlobKey) throws -> BlobInfo?
    /// Keys under `prefix`, in byte order, after `after` (exclusive), at most `limit`.
    func list(prefix: String, after: BlobKey?, limit: Int) throws -> BlobPage
    /// Removes `key`; absent is done.
    func delete(_ key: BlobKey) throws
    /// Removes every key; absent ones are done. The first failure is thrown after the rest
    /// were tried.
    func delete(_ keys: [BlobKey]) throws
}

extension BlobStore {
    /// Through `read(_:range:)` and a copy.
    public func read(_ key: BlobKey, range: Range<UInt64>, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try readCopying(key, range: range, into: buffer)
    }

    /// `read(_:range:into:)` done as `read(_:range:)` and a copy: the default, and what a
    /// backend with a faster way falls back to.
    public func readCopying(_ key: BlobKey, range: Range<UInt64>, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        precondition(UInt64(buffer.count) >= UInt64(range.count), "the buffer holds the range")
        let bytes = try read(key, range: range)
        bytes.withUnsafeBytes { if $0.count > 0 { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        return bytes.count
    }

    /// Through `writer`, in 8 MiB pieces.
    @discardableResult
    public func create(_ key: BlobKey, fromFile path: String) throws -> BlobVersion {
        let file: OpenFile
        let size: UInt64
        do {
            file = try OpenFile(path: path)
            size = try file.status().size
        } catch {
            throw BlobStoreError.from(error, key: key)
        }
        let writer = try self.writer(for: key)
        do {
            var piece = [UInt8](repeating: 0, count: 8 << 20)
            var offset: UInt64 = 0
            while offset < size {
                let count = Int(min(UInt64(piece.count), size - offset))
                try piece.withUnsafeMutableBytes { raw in
                    let part = UnsafeMutableRawBufferPointer(rebasing: raw[..<count])
                    do { try file.readExactly(into: part, at: offset) } catch let error as SystemError { throw BlobStoreError.from(error, key: key) }
                    try writer.append(UnsafeRawBufferPointer(part))
                }
                offset += UInt64(count)
            }
            return try writer.commit()
        } catch {
            writer.abort()
            throw error
        }
    }

    /// Every key under `prefix`, page by page.
    public func listAll(prefix: String, pageSize: Int = 1000) throws -> [BlobInfo] {
        var all: [BlobInfo] = []
        var after: BlobKey?
        while true {
            let page = try list(prefix: prefix, after: after, limit: pageSize)
            all += page.blobs
            guard page.truncated, let last = page.blobs.last else { return all }
            after = last.key
        }
    }

    public func delete(_ keys: [BlobKey]) throws {
        var first: (any Error)?
        for key in keys {
            do { try delete(key) } catch { if first == nil { first = error } }
        }
        if let first { throw first }
    }
}

/// A large blob written in pieces (a pack); visible only once committed.
public protocol BlobWriter: AnyObject {
    func append(_ bytes: UnsafeRawBufferPointer) throws
    /// Publishes the blob create-only (`BlobStore.AlreadyExists` if the key exists).
    func commit() throws -> BlobVersion
    /// Drops what was written; the key is untouched. Safe after a failed commit.
    func abort()
}

extension BlobWriter {
    public func append(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try append($0) } }
}

/// A blob's name: `/`-separated parts of letters, digits, `.`, `_`, `-` (no empty part, no
/// `.` or `..` part), at most 1024 bytes: a path under a directory and an S3 key alike,
/// never outside either.
public struct BlobKey: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let path: String

    public init(_ path: String) throws(BlobStoreError) {
        guard Self.isValid(path) else { throw BlobStoreError(.invalidKey, "'\(path)' is not a blob key (parts of [A-Za-z0-9._-] joined by /)") }
        self.path = path
    }

    /// A key built from parts the program chose (ids, fixed names): a bad one is a bug.
    public init(validated path: String) {
        precondition(Self.isValid(path), "invalid blob key \(path)")
        self.path = path
    }

    public static func isValid(_ path: String) -> Bool {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= 1024 else { return false }
        for part in bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            guard !part.isEmpty, !(part.count == 1 && part[part.startIndex] == UInt8(ascii: ".")),
                  !(part.count == 2 && part.allSatisfy { $0 == UInt8(ascii: ".") }) else { return false }
            for byte in part {
                switch byte {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                     UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"): continue
                default: return false
                }
            }
        }
        return true
    }

    public var description: String { path }
    public static func < (a: BlobKey, b: BlobKey) -> Bool { Array(a.path.utf8).lexicographicallyPrecedes(Array(b.path.utf8)) }
}

/// What changes with every write of a key: an ETag on S3, the file's identity locally.
public struct BlobVersion: Hashable, Sendable, CustomStringConvertible {
    public let tag: String
    public init(_ tag: String) { self.tag = tag }
    public var description: String { tag }
}

public struct BlobInfo: Sendable, Equatable {
    public var key: BlobKey
    public var size: UInt64
    public var version: BlobVersion
    public init(key: BlobKey, size: UInt64, version: BlobVersion) {
        self.key = key
        self.size = size
        self.version = version
    }
}

public struct BlobPage: Sendable {
    public var blobs: [BlobInfo]
    /// More keys follow the last one.
    public var truncated: Bool
    public init(blobs: [BlobInfo], truncated: Bool) {
        self.blobs = blobs
        self.truncated = truncated
    }
}

/// A blob store's failure, with what a caller decides on: is it worth a retry.
public struct BlobStoreError: CodedError, Equatable {
    public enum Kind: String, Sendable {
        case notFound = "BlobStore.NotFound"
        case alreadyExists = "BlobStore.AlreadyExists"
        case versionMismatch = "BlobStore.VersionMismatch"
        case invalidRange = "BlobStore.InvalidRange"
        case invalidKey = "BlobStore.InvalidKey"
        /// A fault that may pass: a 500/503/SlowDown, a connection reset or timeout, EINTR.
        case transient = "BlobStore.Unavailable"
        /// Credentials refused, a bucket missing, a server that lacks what we need.
        case denied = "BlobStore.AccessDenied"
        case unsupported = "BlobStore.Unsupported"
        /// EIO, ENOSPC, a malformed answer: not worth a retry.
        case failed = "BlobStore.Failed"
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var code: String { kind.rawValue }
    public var isTransient: Bool { kind == .transient }
    public var exitStatus: ExitStatus {
        switch kind {
        case .notFound: .notFound
        case .alreadyExists, .versionMismatch: .conflict
        case .invalidRange, .invalidKey, .unsupported: .invalidParameter
        case .denied, .transient, .failed: .ioError
        }
    }

    static func from(_ error: SystemError, key: BlobKey) -> BlobStoreError {
        switch error.errno {
        case ENOENT: BlobStoreError(.notFound, "\(key) does not exist")
        case EEXIST: BlobStoreError(.alreadyExists, "\(key) exists already")
        case EINTR, EAGAIN: BlobStoreError(.transient, error.message)
        case EACCES, EPERM, EROFS: BlobStoreError(.denied, error.message)
        default: BlobStoreError(.failed, error.message)
        }
    }
}
