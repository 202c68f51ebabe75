import ArgumentParser
import DiskSnapCatalog

struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete a snapshot (its chunks stay until garbage collection).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Snapshot id or name.")
    var snapshot: String

    func run() throws {
        try runReporting {
            let repository = try global.openRepository()
            let lock = try repository.lock(.shared, for: "delete")
            defer { withExtendedLifetime(lock) {} }
            let catalog = Catalog(repository: repository)
            let record = try catalog.find(snapshot)
            try catalog.delete(record)
            Output.line("deleted \(record.snapshotId)")
        }
    }
}
