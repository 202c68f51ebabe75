import ArgumentParser
import DiskSnapFormat
import DiskSnapEngine

struct Modify: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "modify", abstract: "Change a snapshot's name or description (under the profile's rules).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Snapshot id or name.") var snapshot: String
    @Option(help: "The new name.") var name: String?
    @Option(help: "The new description (empty clears it).") var description: String?
    @Flag(help: "Print the snapshot as JSON.") var json = false

    func validate() throws {
        guard name != nil || description != nil else { throw ValidationError("give --name or --description") }
    }

    func run() throws {
        try runReporting(json: json) {
            let record = try Editor(repository: try global.openRepository()).modify(snapshot, name: name, description: description)
            if json { Output.json(record) } else { Output.line("\(record.snapshotId) \(record.snapshotName)") }
        }
    }
}
