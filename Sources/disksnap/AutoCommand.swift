import Foundation
import ArgumentParser
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog
import DiskSnapEngine

struct Auto: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take an automatic snapshot of a disk, then expire automatic snapshots beyond the policy.",
        discussion: "Names are 'auto-' plus a UTC timestamp. When the disk is at its limit, the oldest automatic snapshots make room; manual snapshots are never deleted.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Disk id, disk name or path.") var disk: String
    @Option(help: "Keep at most N automatic snapshots of the disk (the new one included).") var keep: Int?
    @Option(help: "Delete automatic snapshots older than D days.") var retentionDays: Int?
    @Flag(help: "Print the result as JSON.") var json = false

    func validate() throws {
        if let keep, keep < 1 { throw ValidationError("--keep must be at least 1") }
        if let retentionDays, retentionDays < 0 { throw ValidationError("--retention-days must not be negative") }
    }

    func run() throws {
        try runReporting(json: json) {
            let repository = try global.openOrInitializeRepository()
            let snapshotter = Snapshotter(repository: repository)
            let catalog = Catalog(repository: repository)
            let registry = DiskRegistry(repository: repository)
            let target: DiskRecord = try {
                let lock = try repository.lockCatalog()
                defer { withExtendedLifetime(lock) {} }
                return try registry.resolveOrRegister(disk)
            }()
            let live = try catalog.records().records.filter { $0.status != .failed }
            let room = try AutoPolicy.makeRoom(rules: snapshotter.rules, disk: target, disks: try registry.disks(),
                                               live: live, repositoryCap: repository.config.maxSnapshots)
            for old in room { try catalog.delete(old) }
            var request = CreateRequest(source: target.diskId.rawValue, name: AutoPolicy.name(at: Date()))
            request.automatic = true
            request.progress = TerminalProgress.ifTerminal
            let made = try snapshotter.create(request).record
            let after = try catalog.records().records.filter { $0.status != .failed }
            let expired = AutoPolicy.expired(disk: target, live: after, keep: keep, retentionDays: retentionDays,
                                             now: Date(), justMade: made.snapshotId)
            for old in expired { try catalog.delete(old) }
            let deleted = (room + expired).map(\.snapshotId.rawValue)
            if json {
                Output.json(AutoResponse(snapshotId: made.snapshotId.rawValue, snapshotName: made.snapshotName,
                                         deletedSnapshotIds: deleted, requestId: RandomUUID.generate()))
            } else {
                Output.line(made.snapshotId.rawValue)
                for id in deleted { Output.line("deleted \(id)") }
            }
        }
    }
}

struct AutoResponse: Encodable {
    var snapshotId: String
    var snapshotName: String
    var deletedSnapshotIds: [String]
    var requestId: String
}
