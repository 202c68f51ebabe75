import ArgumentParser
import DiskSnapCatalog

struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete snapshots (their chunks stay until gc).")

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
            let lock = try repository.lock(.shared, for: "delete")
            defer { withExtendedLifetime(lock) {} }
            let catalog = Catalog(repository: repository)
            // Every name is resolved before anything is deleted: a typo deletes nothing.
            let records = try snapshots.map { try catalog.find($0) }
            var deleted: [String] = []
            for record in records where !deleted.contains(record.snapshotId.rawValue) {
                try catalog.delete(record)
                deleted.append(record.snapshotId.rawValue)
                if !json { Output.line("deleted \(record.snapshotId) (\(record.snapshotName))") }
            }
            if json { Output.json(DeleteResponse(deleted: deleted)) }
        }
    }
}

struct DeleteResponse: Encodable {
    var deleted: [String]
}
