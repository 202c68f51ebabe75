import Foundation
import ArgumentParser
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog
import DiskSnapEngine

struct Auto: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "auto",
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
            let result = try AutoRunner(repository: repository).run(disk: disk, keep: keep, retentionDays: retentionDays,
                                                                    progress: TerminalProgress.ifTerminal)
            let made = result.snapshot
            let deleted = result.deleted.map(\.snapshotId.rawValue)
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
