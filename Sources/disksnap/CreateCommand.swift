import ArgumentParser
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog
import DiskSnapEngine

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Snapshot a disk image or block device.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "A raw disk image file or a block device.")
    var source: String
    @Option(help: "Snapshot name: 2-128 characters, a letter first, then letters, digits, '_', ':', '-'.")
    var name: String
    @Option(help: "Description: 2-256 characters.")
    var description: String = ""
    @Flag(help: "Accept a source that changes while read (the snapshot is marked not crash-consistent).")
    var allowLive = false
    @Flag(help: "Print {\"SnapshotId\", \"RequestId\"} as JSON.")
    var json = false

    func run() throws {
        try runReporting(json: json) {
            var request = CreateRequest(sourcePath: source, name: try SnapshotName(name), description: try SnapshotDescription(description))
            request.allowLive = allowLive
            request.showProgress = Output.stderrIsTerminal
            let repository = try Repository.openOrInitialize(at: global.repositoryPath)
            let record = try Snapshotter(repository: repository).create(request)
            if json {
                Output.json(CreateResponse(snapshotId: record.snapshotId.rawValue, requestId: RandomUUID.generate()))
            } else {
                Output.line(record.snapshotId.rawValue)
            }
        }
    }
}

struct CreateResponse: Encodable {
    var snapshotId: String
    var requestId: String
}
