import ArgumentParser
import DiskSnapFormat
import DiskSnapEngine

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write a snapshot's exact bytes to a file or block device.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Snapshot id or name.")
    var snapshot: String
    @Argument(help: "A new file, an existing file (with --force) or a block device (with --force).")
    var target: String
    @Option(help: "Restore only partition N of the table recorded at snapshot time.")
    var partition: Int?
    @Flag(help: "Replace an existing file or overwrite a block device.")
    var force = false
    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() throws {
        try runReporting(json: json) {
            var request = RestoreRequest(snapshot: snapshot, targetPath: target)
            request.force = force
            request.partition = partition
            request.showProgress = Output.stderrIsTerminal
            let result = try Restorer(repository: try global.openRepository()).restore(request)
            if json {
                Output.json(RestoreResponse(snapshotId: result.record.snapshotId.rawValue, target: result.targetPath,
                                            bytesWritten: result.bytesWritten, seconds: result.seconds))
            } else {
                Output.line("restored \(result.record.snapshotId) to \(result.targetPath): \(partition.map { "partition \($0), " } ?? "")\(ByteFormat.human(result.bytesWritten)) written in \(String(format: "%.2f", result.seconds)) s")
            }
        }
    }
}

struct RestoreResponse: Encodable {
    var snapshotId: String
    var target: String
    var bytesWritten: UInt64
    var seconds: Double
}
