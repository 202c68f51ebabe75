import Foundation
import DiskSnapSys

/// JSON with the API documents' PascalCase keys (`SnapshotId`, `SourceSize`), sorted so that
/// the same record always encodes to the same bytes.
public enum RecordJSON {
    public static func encode<T: Encodable>(_ value: T, pretty: Bool = true) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .custom { path in
            let key = path.last!.stringValue
            return PascalKey(key.prefix(1).uppercased() + key.dropFirst())
        }
        // Encoding our own records cannot fail: every type is plain data.
        return Array(try! encoder.encode(value)) + (pretty ? [0x0a] : [])
    }

    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], file: String) throws(FormatError) -> T {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .custom { path in
            let key = path.last!.stringValue
            // "SnapshotId" -> "snapshotId"; an all-capitals key ("UUID") stays as it is.
            let second = key.dropFirst().first
            return PascalKey(second?.isUppercase == true ? key : key.prefix(1).lowercased() + key.dropFirst())
        }
        do {
            return try decoder.decode(type, from: Data(bytes))
        } catch let DecodingError.keyNotFound(key, _) {
            throw FormatError(file: file, "field \(key.stringValue.prefix(1).uppercased() + key.stringValue.dropFirst()) is missing")
        } catch let DecodingError.dataCorrupted(context) {
            throw FormatError(file: file, "not valid JSON: \(context.debugDescription)")
        } catch {
            throw FormatError(file: file, "does not parse: \(error)")
        }
    }

    private struct PascalKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ string: String) { stringValue = string }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}

/// A JSON record with a `FormatVersion`; decoding refuses versions it does not know.
public protocol VersionedRecord: Codable {
    static var formatVersion: Int { get }
    /// What the record is, for error messages ("snapshot record").
    static var noun: String { get }
    var formatVersion: Int { get }
}

extension VersionedRecord {
    public static func decode(_ bytes: [UInt8], file: String) throws(FormatError) -> Self {
        let record = try RecordJSON.decode(Self.self, from: bytes, file: file)
        guard record.formatVersion == formatVersion else {
            throw FormatError(file: file, "\(noun) format version \(record.formatVersion) is not supported (this disksnap reads \(formatVersion))")
        }
        return record
    }
}

/// `config.json`: what every writer must agree on. Written once by `init`.
public struct RepositoryConfig: VersionedRecord, Sendable, Equatable {
    public static let noun = "repository"
    public static let formatVersion = 1
    public var formatVersion: Int
    public var repositoryId: String
    public var chunkSize: ChunkSize
    public var compression: Compression
    public var creationTime: String
    /// Rule profile (`ecs`, `wuying`, `swas`, `css`); absent means `ecs`.
    public var profile: String?
    /// Repository-wide cap on snapshots; absent means none.
    public var maxSnapshots: Int?
    /// `none` when `init --encryption none` chose it; `aes-256-gcm` inside an encrypted
    /// repository's sealed settings (`EncryptedConfig`); absent in repositories made before.
    public var encryption: String?

    public init(chunkSize: ChunkSize, compression: Compression) {
        formatVersion = Self.formatVersion
        repositoryId = RandomUUID.generate()
        self.chunkSize = chunkSize
        self.compression = compression
        creationTime = ISOTime.now()
    }
}

/// `config.json` of an encrypted repository (format version 2): what must stay readable
/// without the key, and nothing else. The settings (`RepositoryConfig`, chunk size and all)
/// are sealed in `SealedConfig`; a disksnap that reads version 1 only refuses the repository.
public struct EncryptedConfig: VersionedRecord, Sendable, Equatable {
    public static let noun = "repository"
    public static let formatVersion = 2
    public var formatVersion: Int = Self.formatVersion
    public var repositoryId: String
    public var encryption: Scheme
    /// Base64 of the sealed `RepositoryConfig` (context `config`).
    public var sealedConfig: String

    public struct Scheme: Codable, Sendable, Equatable {
        /// `AES-256-GCM`: blocks, tables of contents, records and index files.
        public var cipher: String
        /// `HMAC-SHA-256`: chunk ids.
        public var chunkIds: String
        public static let current = Scheme(cipher: "AES-256-GCM", chunkIds: "HMAC-SHA-256")
    }

    public init(repositoryId: String, sealedConfig: String) {
        self.repositoryId = repositoryId
        encryption = .current
        self.sealedConfig = sealedConfig
    }

    /// The format version of a `config.json`, read before knowing which of the two it is.
    public static func version(of bytes: [UInt8], file: String) throws(FormatError) -> Int {
        struct Probe: Decodable { var formatVersion: Int }
        return try RecordJSON.decode(Probe.self, from: bytes, file: file).formatVersion
    }
}

/// Where a snapshot stands. A `progressing` record whose creator is gone (its lock is free)
/// is reported as `failed`.
public enum SnapshotStatus: String, Codable, Sendable {
    case progressing, accomplished, failed
    /// Set by `check --repair` on an accomplished snapshot whose fixed index or chunks are
    /// gone; `FailureReason` says what is missing. Never restored.
    case damaged
}

public enum SourceKind: String, Codable, Sendable {
    case file, blockDevice
}

/// `snapshots/<SnapshotId>.json`: one snapshot. Rewritten atomically as it goes from
/// `progressing` to `accomplished` or `failed`.
public struct SnapshotRecord: VersionedRecord, Sendable, Equatable {
    public static let noun = "snapshot record"
    public static let formatVersion = 1
    public var formatVersion: Int = Self.formatVersion
    public var snapshotId: SnapshotID
    public var snapshotName: String
    public var description: String
    public var status: SnapshotStatus
    public var sourcePath: String
    public var sourceKind: SourceKind
    public var sourceSize: UInt64
    public var chunkSize: Int
    public var chunkCount: UInt64
    public var creationTime: String
    public var completionTime: String?
    /// Bytes read from the source (holes are not read).
    public var bytesRead: UInt64 = 0
    /// Compressed bytes this snapshot added to the store.
    public var bytesStoredNew: UInt64 = 0
    /// Chunks this snapshot added to the store.
    public var chunksStoredNew: UInt64 = 0
    /// Non-zero chunks equal to the disk's previous snapshot at the same position (found
    /// without an index lookup); nil in records written before it was counted.
    public var chunksUnchanged: UInt64?
    /// Bytes of all-zero chunks and holes, recorded as zero entries.
    public var zeroBytes: UInt64 = 0
    /// False when the source changed while it was read and `--allow-live` accepted that.
    public var crashConsistent: Bool = true
    /// "qcow2" when the source was read as a qcow2 image's guest disk (absent: raw bytes).
    public var sourceFormat: String?
    /// A qcow2 source's backing files, nearest first.
    public var backingChain: [String]?
    /// What libblkid found on the source at snapshot time (docs/FORMAT.md, "Disk identity").
    public var identity: DiskIdentity?
    /// How the disk differs from the identity recorded before ("grown ...", "repartitioned ...").
    public var identityChange: String?
    /// For `failed`: why.
    public var failureReason: String?
    /// Entries digest of the fixed index, binding record and index together.
    public var fixedIndexDigest: String?
    /// The registered disk this is a snapshot of, and its type.
    public var sourceDiskId: DiskID?
    public var sourceDiskType: String?
    public var tags: [TagPair] = []
    /// Set by `--client-token`, with a digest of the parameters it was used with.
    public var clientToken: String?
    public var requestFingerprint: String?
    /// Made by the automatic-snapshot runner (`disksnap auto`), not by hand.
    public var automatic: Bool = false
    /// Percent of the source read, as the documents write it ("37%"); "100%" when done.
    public var progress: String = "0%"
    /// How a point in time was had from a disk in use: `qemu-fleecing` (a running QEMU's
    /// point-in-time view), `qemu-read-only` (QEMU has the image open read-only),
    /// `libvirt-pull-backup` (libvirt's backup API), `reflink-clone`; absent: the disk was
    /// read directly.
    public var consistencyMethod: String?
    /// True when the guest's filesystems were frozen by its agent around the instant.
    public var guestFrozen: Bool?
    /// With `guestFrozen`: how many filesystems the agent froze, and for how long the
    /// guest's writes waited (the flush before the freeze included).
    public var frozenFilesystems: Int?
    public var freezeMilliseconds: Int?
    /// Change tracking through QEMU's dirty bitmaps (docs/FORMAT.md, "Snapshot record").
    public var changeTracking: ChangeTrackingRecord?
    /// `create --keep-clone`: the reflink clone this snapshot was read from, kept beside the
    /// image as the next snapshot's change tracker.
    public var keptClone: KeptCloneRecord?
    /// `disksnap copy`: the repository id this snapshot was copied from, and when the copy
    /// was committed here (the other fields describe the snapshot as it was taken).
    public var copiedFrom: String?
    public var copyTime: String?
    /// Set on every snapshot of a group taken as one (the API's Huawei CSS cluster
    /// snapshot: every disk of an instance): the group's id, the same in each.
    public var groupId: String?

    public init(snapshotId: SnapshotID, snapshotName: String, description: String, sourcePath: String,
                sourceKind: SourceKind, sourceSize: UInt64, chunkSize: Int) {
        self.snapshotId = snapshotId
        self.snapshotName = snapshotName
        self.description = description
        self.status = .progressing
        self.sourcePath = sourcePath
        self.sourceKind = sourceKind
        self.sourceSize = sourceSize
        self.chunkSize = chunkSize
        self.chunkCount = FixedIndexHeader.chunkCount(diskSize: sourceSize, chunkSize: UInt32(chunkSize))
        self.creationTime = ISOTime.now()
    }
}

/// A kept reflink clone: where, and what its status was when kept (any change to it since
/// changes its ctime, and it is then not trusted).
public struct KeptCloneRecord: Codable, Sendable, Equatable {
    public var path: String
    public var inode: UInt64
    /// `seconds.nanoseconds`.
    public var changeTime: String
    public var size: UInt64
    public init(path: String, inode: UInt64, changeTime: String, size: UInt64) {
        (self.path, self.inode, self.changeTime, self.size) = (path, inode, changeTime, size)
    }
}

/// What a snapshot of a disk in use read, and what it left for the next one.
public struct ChangeTrackingRecord: Codable, Sendable, Equatable {
    /// QEMU's dirty bitmaps (`qemu`, also when absent in older records), libvirt's
    /// checkpoints (`libvirt-checkpoint`) or the extents of kept reflink clones
    /// (`reflink-extents`).
    public var method: String?
    /// libvirt: the connection, the domain and the disk's target; `bitmap` is then the
    /// checkpoint this snapshot left (its bitmap in the qcow2 image has the same name).
    public var libvirtUri: String?
    public var domain: String?
    public var target: String?
    /// The block node the view was made of (through QEMU).
    public var node: String?
    /// Through QEMU: the monitor socket the view was made through (absolute), where
    /// deleting this snapshot removes its bitmap.
    public var qmpSocket: String?
    /// The persistent dirty bitmap this snapshot left in the image, counting writes from
    /// its instant on; nil when none could be (an image open read-only).
    public var bitmap: String?
    public var granularity: UInt64?
    /// Set for an incremental: the snapshot whose bitmap said what changed; every chunk
    /// outside the changed extents is that snapshot's.
    public var baseSnapshotId: String?
    /// Bytes the bitmap marked changed (in units of its granularity, the chunk size).
    public var changedBytes: UInt64?
    /// Set for a full read: why the bitmap could not be used.
    public var fullReadReason: String?

    public init(node: String?, bitmap: String?, granularity: UInt64?) {
        self.node = node
        self.bitmap = bitmap
        self.granularity = granularity
    }
}

/// A tag as stored; validated by the catalog's `Tag`.
public struct TagPair: Codable, Sendable, Equatable, Hashable {
    public var key: String
    public var value: String
    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }
}

/// `disks/<DiskId>.json`: a registered disk.
public struct DiskRecord: VersionedRecord, Sendable, Equatable {
    public static let noun = "disk record"
    public static let formatVersion = 1
    public var formatVersion: Int = Self.formatVersion
    public var diskId: DiskID
    public var diskName: String
    /// Absolute path of the image file or block device.
    public var path: String
    /// `system` or `data`.
    public var diskType: String
    /// The VM (instance) the disk belongs to, when given.
    public var instance: String?
    public var creationTime: String
    /// What libblkid found when the disk was registered, updated by later snapshots that
    /// saw it grow, be repartitioned, or be replaced with --force.
    public var identity: DiskIdentity?

    public init(diskId: DiskID, diskName: String, path: String, diskType: String, instance: String?) {
        self.diskId = diskId
        self.diskName = diskName
        self.path = path
        self.diskType = diskType
        self.instance = instance
        creationTime = ISOTime.now()
    }
}

/// ISO 8601 UTC timestamps with milliseconds ("2026-11-24T11:14:05.123Z"), so that records
/// made in the same second still sort in the order they were made.
public enum ISOTime {
    public static func now() -> String { format(Date()) }
    public static func parse(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)
    }

    public static func format(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }
}

/// `gc.json`: what garbage collection has condemned and is waiting for (docs/DESIGN.md,
/// "Garbage collection"). Published atomically under the catalog lock; absent until the
/// first `gc`.
public struct GCState: VersionedRecord, Sendable, Equatable {
    public static let noun = "gc state"
    public static let formatVersion = 1
    public var formatVersion: Int = Self.formatVersion
    /// Increases with every condemnation.
    public var generation: UInt64
    public var creationTime: String
    /// Packs (hex ids) to be removed, their live chunks copied first. Writers that start
    /// after this record is published never deduplicate against chunks in these packs.
    public var condemnedPacks: [String]
    /// Snapshots whose creation was running (or ended after the mark began) when the packs
    /// were condemned: they may reference condemned chunks, so the packs are removed only
    /// after every one of them has ended and a new mark has counted their references.
    public var waitingFor: [String]
    /// Packs in `packs/` that no index segment named at condemnation: a running writer's
    /// (renamed before its segment is published) or a crash's leftovers. Removed by a later
    /// gc if still unnamed once `waitingFor` has ended.
    public var unindexedPacks: [String]

    public init(generation: UInt64, condemnedPacks: [String], waitingFor: [String], unindexedPacks: [String]) {
        self.generation = generation
        creationTime = ISOTime.now()
        self.condemnedPacks = condemnedPacks
        self.waitingFor = waitingFor
        self.unindexedPacks = unindexedPacks
    }
}
