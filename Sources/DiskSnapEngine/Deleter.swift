import DiskSnapStore
import DiskSnapCatalog
import DiskSnapFormat

/// Deletes snapshots, for the CLI's `delete` and the API's DeleteSnapshot alike: every
/// reference is resolved before anything is deleted (a typo deletes nothing), under the
/// repository's shared lock (a gc waits). Their chunks stay until gc.
public struct Deleter: Sendable {
    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    /// Deletes the snapshots `references` name (ids or names; one named twice is deleted
    /// once), in the order given; returns their records. `check` runs on each record first,
    /// while the lock is held: a caller's condition (a status the API refuses) fails the
    /// whole call before anything is deleted.
    @discardableResult
    public func delete(_ references: [String], check: (SnapshotRecord) throws -> Void = { _ in }) throws -> [SnapshotRecord] {
        let lock = try repository.lock(.shared, for: "delete")
        defer { withExtendedLifetime(lock) {} }
        let catalog = Catalog(repository: repository)
        var records: [SnapshotRecord] = []
        for reference in references {
            let record = try catalog.find(reference)
            if !records.contains(where: { $0.snapshotId == record.snapshotId }) { records.append(record) }
        }
        for record in records { try check(record) }
        for record in records { try catalog.delete(record) }
        return records
    }
}
