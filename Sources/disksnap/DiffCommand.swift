import ArgumentParser
import DiskSnapSys
import DiskSnapFormat
import DiskSnapEngine

struct Diff: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Show the byte ranges that changed between two snapshots, or between a snapshot and a disk now.",
        discussion: "Between two snapshots only their indexes are read. Against a disk (a path, or a registered disk's name or id; by default the snapshot's own disk) the disk is read and hashed chunk by chunk. Ranges are whole chunks, merged; each names the recorded partitions it overlaps.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The older snapshot (id or name).")
    var from: String
    @Argument(help: "A newer snapshot, or a disk to read now (default: the snapshot's disk).")
    var to: String?
    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() throws {
        try runReporting(json: json) {
            var request = DiffRequest(from: from, to: to)
            request.progress = TerminalProgress.ifTerminal
            let result = try Differ(repository: try global.openRepository()).diff(request)
            let response = DiffResponse(result)
            if json {
                Output.json(response)
                return
            }
            Output.line("\(response.from) -> \(response.to): \(ByteFormat.human(result.changedBytes)) changed in \(result.ranges.count) ranges (\(result.changedChunks) chunks of \(ByteFormat.human(result.chunkSize)))\(result.fromSize != result.toSize ? ", size \(result.fromSize) -> \(result.toSize) bytes" : "")")
            for range in result.ranges {
                let parts = range.partitions.isEmpty ? "" : "  partition \(range.partitions.map(String.init).joined(separator: ", "))"
                Output.line("  \(range.range.start)-\(range.range.end)  \(ByteFormat.human(range.range.count))\(parts)")
            }
        }
    }
}

struct DiffResponse: Encodable {
    struct Range: Encodable {
        var start: UInt64
        var end: UInt64
        var length: UInt64
        var partitions: [Int]
    }
    var from: String
    var to: String
    var toKind: String
    var fromSize: UInt64
    var toSize: UInt64
    var chunkSize: UInt64
    var changedChunks: UInt64
    var changedBytes: UInt64
    var bytesRead: UInt64
    var seconds: Double
    var ranges: [Range]

    init(_ result: DiffResult) {
        from = result.from.snapshotId.rawValue
        to = result.to?.snapshotId.rawValue ?? result.toPath ?? ""
        toKind = result.to == nil ? "disk" : "snapshot"
        fromSize = result.fromSize
        toSize = result.toSize
        chunkSize = result.chunkSize
        changedChunks = result.changedChunks
        changedBytes = result.changedBytes
        bytesRead = result.bytesRead
        seconds = result.seconds
        ranges = result.ranges.map { Range(start: $0.range.start, end: $0.range.end, length: $0.range.count, partitions: $0.partitions) }
    }
}
