import DiskSnapStore
import DiskSnapCatalog
import DiskSnapFormat

/// Changes a snapshot's name or description (the CLI's `modify`, the API's
/// ModifySnapshotAttribute): the profile's rules as at creation, and a name unique among the
/// disk's live snapshots, checked and written under the catalog lock. A snapshot being
/// created is refused: its creator rewrites its record until it commits.
public struct Editor: Sendable {
    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    public func modify(_ reference: String, name: String?, description: String?) throws -> SnapshotRecord {
        let lock = try repository.lock(.shared, for: "modify")
        defer { withExtendedLifetime(lock) {} }
        let rules = Snapshotter(repository: repository).rules
        let catalogLock = try repository.lockCatalog()
        defer { withExtendedLifetime(catalogLock) {} }
        let catalog = Catalog(repository: repository)
        var record = try catalog.find(reference)
        guard record.status != .progressing else {
            throw CatalogError.busy("IncorrectSnapshotStatus", "snapshot \(record.snapshotId) is still being created; change it once it is accomplished")
        }
        if let name, name != record.snapshotName {
            try rules.validateName(name, automatic: record.automatic && name.lowercased().hasPrefix("auto"))
            if let diskID = record.sourceDiskId, let disk = try DiskRegistry(repository: repository).disks().first(where: { $0.diskId == diskID }) {
                let live = try catalog.records().records.filter { $0.status != .failed && $0.snapshotId != record.snapshotId }
                try QuotaPolicy.checkUniqueName(rules: rules, name: name, disk: disk, live: live)
            }
            record.snapshotName = name
        }
        if let description {
            try rules.validateDescription(description)
            record.description = description
        }
        try catalog.save(record)
        return record
    }
}
