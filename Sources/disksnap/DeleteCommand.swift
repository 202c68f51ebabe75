import ArgumentParser
import DiskSnapCatalog
import DiskSnapEngine

struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete snapshots (their chunks stay until gc).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Snapshot ids or names.")
    var snapshots: [String]
    @Flag(help: "Print the deleted ids as JSON.")
    var json = false

    func validate() throws {
        guard !snapshots.isEmpty else { throw ValidationError("name at least one snapshot") }
    }

    func run() throws {
        try runReporting(json: json) {
            let repository = try global.openRepository()
            let deleted = try Deleter(repository: repository).delete(snapshots)
            if !json {
                for record in deleted { Output.line("deleted \(record.snapshotId) (\(record.snapshotName))") }
            }
            if json { Output.json(DeleteResponse(deleted: deleted.map(\.snapshotId.rawValue))) }
        }
    }
}

struct DeleteResponse: Encodable {
    var deleted: [String]
}
