import Foundation
import DiskSnapStore
import DiskSnapCatalog
import DiskSnapFormat

/// What `AutoRunner.run` did.
public struct AutoResult: Sendable {
    public var snapshot: SnapshotRecord
    /// Automatic snapshots deleted: to make room first, then those past the policy.
    public var deleted: [SnapshotRecord]
}

/// An automatic snapshot of a disk (the CLI's `auto`, the API server's schedules): room made
/// by deleting the disk's oldest automatic snapshots when the quota is reached, the snapshot
/// (named `auto-` + UTC time), then the automatic snapshots the policy no longer keeps.
/// Manual snapshots are never deleted. Deletions hold the repository's shared lock, the
/// registration of a new path the catalog lock, the snapshot the create's locks.
public struct AutoRunner: Sendable {
    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    public func run(disk reference: String, keep: Int?, retentionDays: Int?, progress: (any ProgressObserver)? = nil,
                    now: @Sendable () -> Date = { Date() }) throws -> AutoResult {
        let snapshotter = Snapshotter(repository: repository)
        let catalog = Catalog(repository: repository)
        let registry = DiskRegistry(repository: repository)
        let target: DiskRecord = try {
            let lock = try repository.lockCatalog()
            defer { withExtendedLifetime(lock) {} }
            return try registry.resolveOrRegister(reference)
        }()
        let room: [SnapshotRecord] = try {
            let lock = try repository.lock(.shared, for: "auto")
            defer { withExtendedLifetime(lock) {} }
            let live = try catalog.records().records.filter { $0.status != .failed }
            let room = try AutoPolicy.makeRoom(rules: snapshotter.rules, disk: target, disks: try registry.disks(),
                                               live: live, repositoryCap: repository.config.maxSnapshots)
            for old in room { try catalog.delete(old) }
            return room
        }()
        var request = CreateRequest(source: target.diskId.rawValue, name: AutoPolicy.name(at: now()))
        request.automatic = true
        request.progress = progress
        let made = try snapshotter.create(request).record
        let lock = try repository.lock(.shared, for: "auto")
        defer { withExtendedLifetime(lock) {} }
        let after = try catalog.records().records.filter { $0.status != .failed }
        let expired = AutoPolicy.expired(disk: target, live: after, keep: keep, retentionDays: retentionDays,
                                         now: now(), justMade: made.snapshotId)
        for old in expired { try catalog.delete(old) }
        return AutoResult(snapshot: made, deleted: room + expired)
    }
}

/// A retention policy applied (the CLI's `prune`): per disk, what `PrunePolicy` keeps stays,
/// the rest is deleted (nothing with `dryRun`), under the repository's shared lock.
public struct Pruner: Sendable {
    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    public func prune(rule: PrunePolicy.Rule, disk reference: String?, dryRun: Bool) throws -> [PrunePolicy.Decision] {
        let lock = try repository.lock(.shared, for: "prune")
        defer { withExtendedLifetime(lock) {} }
        let catalog = Catalog(repository: repository)
        var records = try catalog.records().records
        if let reference {
            let found = try DiskRegistry(repository: repository).get(reference)
            records = records.filter { $0.sourceDiskId == found.diskId }
        }
        let plan = PrunePolicy.plan(records, rule: rule)
        if !dryRun {
            for decision in plan where !decision.keep { try catalog.delete(decision.record) }
        }
        return plan
    }
}
