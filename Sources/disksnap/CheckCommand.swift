import ArgumentParser
import DiskSnapEngine

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Verify the repository; exit 0 only when all is well.")

    @OptionGroup var global: GlobalOptions
    @Flag(help: "Also decompress every stored chunk and check its digest.")
    var readData = false
    @Flag(help: "Print the report as JSON.")
    var json = false

    func run() throws {
        var clean = true
        try runReporting(json: json) {
            let report = try Checker(repository: try global.openRepository()).check(readData: readData)
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
