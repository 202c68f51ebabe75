import ArgumentParser
import DiskSnapFormat
import DiskSnapEngine

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Write a snapshot's exact bytes to a file or block device.",
        discussion: "With --in-place, TARGET is the existing disk: it is read and hashed chunk by chunk and only the chunks that differ from the snapshot are written (and a file's size set). An interrupted in-place restore is finished by running it again.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Snapshot id or name.")
    var snapshot: String
    @Argument(help: "A new file, an existing file (with --force or --in-place) or a block device (with --force or --in-place).")
    var target: String
    @Option(help: "Restore only partition N of the table recorded at snapshot time.")
    var partition: Int?
    @Flag(help: "TARGET is the disk to repair: write only the chunks that differ from the snapshot.")
    var inPlace = false
    @Flag(help: "With --in-place: compare and report what would be written; write nothing.")
    var dryRun = false
    @Flag(help: "After writing, read the target back from the disk and compare every chunk with the snapshot.")
    var verify = false
    @Option(help: "The new file's format: raw (default) or qcow2 (a sparse qcow2 v3 image).")
    var format: String = "raw"
    @Flag(help: "Replace an existing file, overwrite a block device, or restore in place onto a disk in use or a smaller file.")
    var force = false
    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() throws {
        try runReporting(json: json) {
            var request = RestoreRequest(snapshot: snapshot, targetPath: target)
            request.force = force
            request.partition = partition
            request.inPlace = inPlace
            request.dryRun = dryRun
            request.verify = verify
            guard let parsed = SourceFormat(rawValue: format) else {
                throw ValidationError("--format is raw or qcow2")
            }
            request.format = parsed
            request.progress = TerminalProgress.ifTerminal
            // From a bucket too, the local count: on loopback SeaweedFS a 276 MiB restore took
            // 1.35 s with 4, 8 or 16 workers (the server's CPU is the limit), and each worker
            // holds about 7 MiB (64, 96, 152 MiB peak).
            let result = try Restorer(repository: try global.openRepository()).restore(request)
            if json {
                Output.json(RestoreResponse(result))
                return
            }
            let part = partition.map { "partition \($0), " } ?? ""
            let seconds = String(format: "%.2f", result.seconds)
            guard result.inPlace else {
                Output.line("restored \(result.record.snapshotId) to \(result.targetPath): \(part)\(ByteFormat.human(result.bytesWritten)) written in \(seconds) s\(result.verified ? ", verified" : "")")
                return
            }
            let differing = "\(result.chunksDiffering) chunks differ (\(ByteFormat.human(result.bytesDiffering)))"
            let resize = result.resizedFrom.map { ", size \($0) -> \(result.bytesExamined) bytes" } ?? ""
            if result.dryRun {
                Output.line("dry run, \(result.targetPath) against \(result.record.snapshotId): \(part)\(ByteFormat.human(result.bytesExamined)) examined, \(differing) would be written\(resize), \(seconds) s")
            } else {
                Output.line("restored \(result.record.snapshotId) in place to \(result.targetPath): \(part)\(ByteFormat.human(result.bytesExamined)) examined, \(differing), \(ByteFormat.human(result.bytesWritten)) written\(resize) in \(seconds) s\(result.verified ? ", verified" : "")")
            }
        }
    }
}

struct RestoreResponse: Encodable {
    var snapshotId: String
    var target: String
    var mode: String
    var dryRun: Bool
    var partition: Int?
    var bytesExamined: UInt64
    var chunksDiffering: UInt64
    var bytesDiffering: UInt64
    var bytesWritten: UInt64
    var resizedFrom: UInt64?
    var verified: Bool
    var seconds: Double

    init(_ result: RestoreResult) {
        snapshotId = result.record.snapshotId.rawValue
        target = result.targetPath
        mode = result.inPlace ? "in-place" : "new"
        dryRun = result.dryRun
        bytesExamined = result.bytesExamined
        chunksDiffering = result.chunksDiffering
        bytesDiffering = result.bytesDiffering
        bytesWritten = result.bytesWritten
        resizedFrom = result.resizedFrom
        verified = result.verified
        seconds = result.seconds
    }
}
