import ArgumentParser
import DiskSnapEngine

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check", abstract: "Verify the repository; exit 0 only when all is well.")

    @OptionGroup var global: GlobalOptions
    @Flag(help: "Also decompress every stored chunk and check its digest.")
    var readData = false
    @Flag(help: "Rebuild the chunk index from the packs, mark snapshots that lost chunks as damaged, then check. Runs alone.")
    var repair = false
    @Option(help: "With --read-data: read only the packs that hold this snapshot's chunks (id or name).")
    var snapshot: String?
    @Flag(help: "Print the report as JSON.")
    var json = false

    func validate() throws {
        if snapshot != nil && !readData { throw ValidationError("--snapshot limits --read-data: pass both") }
    }

    func run() throws {
        var clean = true
        try runReporting(json: json) {
            if repair {
                let r = try Repairer(repository: try global.openRepository()).repair(readData: readData)
                let damaged = r.snapshotsDamaged.map { "\($0.id) (\($0.reason))" }
                var parts = ["repair: index rebuilt from \(r.packsRead) packs (\(r.chunksIndexed) chunks, \(r.segmentsReplaced) segments replaced)"]
                if !r.packsUnreadable.isEmpty { parts.append("unreadable packs: " + r.packsUnreadable.joined(separator: ", ")) }
                if r.chunksDropped > 0 { parts.append("\(r.chunksDropped) chunks with bad data left out") }
                if r.gcStateRemoved { parts.append("damaged gc.json removed") }
                parts.append("snapshots marked damaged: " + (damaged.isEmpty ? "none" : damaged.joined(separator: "; ")))
                let summary = parts.joined(separator: "; ")
                if json { Output.log(summary) } else { Output.line(summary) }
            }
            let report = try Checker(repository: try global.openRepository()).check(readData: readData, readDataOf: snapshot)
            clean = report.isClean
            if json {
                Output.json(report)
                return
            }
            for problem in report.problems { Output.line("problem: \(problem.code): \(problem.message)") }
            for note in report.notes { Output.line("note: \(note)") }
            Output.line("checked \(report.packsChecked) packs, \(report.chunksChecked) chunks, \(report.snapshotsChecked) snapshots"
                        + (readData ? ", verified \(report.chunksVerified) chunks' data" : "")
                        + ": " + (clean ? "no problems" : "\(report.problems.count) problems"))
        }
        if !clean { throw ExitCode(1) }
    }
}
