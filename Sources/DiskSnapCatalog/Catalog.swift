import Synchronization
import DiskSnapSys
import DiskSnapQemu
import DiskSnapFormat
import DiskSnapStore

/// The snapshot records of a repository.
public struct Catalog: Sendable {
    public let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    /// The lock a creator holds for its whole run; a `progressing` record whose lock is free
    /// belongs to a process that died.
    public static func creationLockName(_ id: SnapshotID) -> String { "create-\(id.rawValue)" }

    /// `progressOnly`: only the `Progress` of a running create changed (kept local for a bucket).
    public func save(_ record: SnapshotRecord, progressOnly: Bool = false) throws {
        try repository.writeRecord(RecordJSON.encode(record), record.snapshotId, localOnly: progressOnly)
    }

    public func record(_ id: SnapshotID) throws -> SnapshotRecord {
        let path = repository.recordPath(id)
        guard FileSystem.exists(path) else { throw CatalogError.notFound("no snapshot \(id) in \(repository.location)") }
        return effective(try SnapshotRecord.decode(try repository.readObject(path), file: path), path: path)
    }

    /// Every readable record, oldest first, and the errors of those that do not parse: one
    /// damaged record must not hide the others (`check` reports it too).
    ///
    /// With `markingDeadFailed`, a `progressing` record whose creator is gone is also
    /// rewritten as `failed` on disk. Writers pass it under the catalog lock; a creator takes
    /// its lock before it writes its first record, so a live creation is never marked.
    ///
    /// With a `cache` (a long-lived reader: the API server), a record file whose inode, size
    /// and times are those seen before is not read and decoded again (records are replaced by
    /// rename, never written in place, so a changed record is a new file).
    public func records(markingDeadFailed: Bool = false, cache: RecordCache? = nil) throws -> (records: [SnapshotRecord], damaged: [FormatError]) {
        var result: [SnapshotRecord] = []
        var damaged: [FormatError] = []
        let names = try FileSystem.listDirectory(repository.snapshotsDirectory).filter { $0.hasSuffix(".json") }
        cache?.keep(only: Set(names))
        for name in names {
            let path = "\(repository.snapshotsDirectory)/\(name)"
            do {
                let stored: SnapshotRecord
                if let cache {
                    guard let status = try FileSystem.statusIfExists(path) else { continue }
                    if let known = cache.record(name, status) {
                        stored = known
                    } else {
                        stored = try SnapshotRecord.decode(try repository.readObject(path), file: path)
                        cache.remember(name, status, stored)
                    }
                } else {
                    stored = try SnapshotRecord.decode(try repository.readObject(path), file: path)
                }
                let seen = effective(stored, path: path)
                if markingDeadFailed && seen.status == .failed && stored.status == .progressing { try save(seen) }
                result.append(seen)
            } catch let error as FormatError {
                damaged.append(error)
            } catch let error as SystemError where error.code == "IO.NotFound" {
                continue  // deleted since the listing
            }
        }
        return (result.sorted { ($0.creationTime, $0.snapshotId) < ($1.creationTime, $1.snapshotId) }, damaged)
    }

    /// The record as readers should see it: `progressing` with no living creator is `failed`.
    /// A creation lock that cannot be probed counts as held: the record stays `progressing`.
    ///
    /// `record` was read from `path` before the lock was probed: its creator may have
    /// committed and let go in between (a creator writes its last record before it lets go of
    /// its lock). So a free lock is followed by a second read, which is then the creator's last
    /// word; only a record still `progressing` after it is the record of a creator that died.
    /// (Without it, an admission's marking overwrote a snapshot accomplished in that moment
    /// with `failed`: seen under load in test_api's parallel creates.)
    func effective(_ record: SnapshotRecord, path: String) -> SnapshotRecord {
        guard record.status == .progressing,
              (try? repository.isLockHeld(name: Self.creationLockName(record.snapshotId))) == false else {
            return record
        }
        if let now = try? SnapshotRecord.decode(try repository.readObject(path), file: path), now.status != .progressing {
            return now
        }
        var failed = record
        failed.status = .failed
        failed.failureReason = failed.failureReason ?? "the creating process ended before the snapshot completed"
        return failed
    }

    /// The disk's latest accomplished snapshot of that chunk size among `records`: the
    /// reference an incremental (a create, a copy) compares its entries with.
    public static func latestAccomplished(of disk: DiskID?, chunkSize: Int, among records: [SnapshotRecord]) -> SnapshotRecord? {
        records.filter { $0.sourceDiskId == disk && $0.status == .accomplished && $0.chunkSize == chunkSize }
            .max { $0.creationTime < $1.creationTime }
    }

    /// Finds a snapshot by id or by name. A name shared by several snapshots is ambiguous.
    public func find(_ reference: String) throws -> SnapshotRecord {
        if let id = SnapshotID(reference) { return try record(id) }
        let matches = try records().records.filter { $0.snapshotName == reference }
        switch matches.count {
        case 0: throw CatalogError.notFound("no snapshot with id or name '\(reference)' in \(repository.location)")
        case 1: return matches[0]
        default:
            throw CatalogError.ambiguous("name '\(reference)' belongs to \(matches.count) snapshots (\(matches.map(\.snapshotId.rawValue).joined(separator: ", "))); use an id")
        }
    }

    /// Removes a snapshot: the record first, then its fixed index (reverse of creation),
    /// so a crash in between leaves an unreferenced index, never a record without one.
    public func delete(_ record: SnapshotRecord) throws {
        // An accomplished snapshot's creator has committed: whether it still runs (it may be
        // compacting the index) does not matter. Any other may still be written.
        if record.status != .accomplished, try repository.isLockHeld(name: Self.creationLockName(record.snapshotId)) {
            throw CatalogError.busy("IncorrectSnapshotStatus", "snapshot \(record.snapshotId) is still being created")
        }
        try repository.removeRecord(record.snapshotId)
        try repository.removeFixedIndex(record.snapshotId.rawValue)
        // Its kept reflink clone (if it is still the file kept): of no use without it.
        if let kept = record.keptClone { _ = ReflinkClone.removeKept(path: kept.path, inode: kept.inode) }
        // Its libvirt checkpoint (best effort: libvirt may be down; the next create of that
        // domain removes it then): no later snapshot can be incremental from a deleted one.
        if let tracking = record.changeTracking, tracking.method == "libvirt-checkpoint",
           let uri = tracking.libvirtUri, let domain = tracking.domain, let checkpoint = tracking.bitmap {
            LibvirtView.removeCheckpoint(uri: uri, domain: domain, name: checkpoint)
        }
        // Its QEMU bitmap, the same way (best effort: QEMU may be gone or busy; the next
        // view of that disk removes it then). Only the name this repository gives this
        // snapshot's bitmap is ever sent.
        if let tracking = record.changeTracking, tracking.method ?? "qemu" == "qemu",
           let socket = tracking.qmpSocket, let node = tracking.node,
           tracking.bitmap == ChangeTracking.bitmapName(repositoryID: repository.config.repositoryId, snapshotID: record.snapshotId.rawValue) {
            _ = PointInTimeView.removeBitmap(qmpSocket: socket, node: node, name: tracking.bitmap!)
        }
    }
}

/// Decoded snapshot records by file, for a reader that lists them again and again.
public final class RecordCache: Sendable {
    private let entries = Mutex<[String: (FileStatus, SnapshotRecord)]>([:])

    public init() {}

    func record(_ name: String, _ status: FileStatus) -> SnapshotRecord? {
        entries.withLock { entries in
            guard let (seen, record) = entries[name], seen == status else { return nil }
            return record
        }
    }

    func remember(_ name: String, _ status: FileStatus, _ record: SnapshotRecord) {
        entries.withLock { $0[name] = (status, record) }
    }

    func keep(only names: Set<String>) {
        entries.withLock { entries in
            for name in entries.keys where !names.contains(name) { entries[name] = nil }
        }
    }
}
