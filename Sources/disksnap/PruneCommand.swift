import ArgumentParser
import DiskSnapFormat
import DiskSnapCatalog
import DiskSnapEngine

struct Prune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Delete the snapshots a retention policy does not keep (then run gc to free their chunks).",
        discussion: "Per disk: the N newest (--keep-last), and the newest of each of the last N days, ISO weeks and months (UTC) that have one. Only accomplished snapshots are considered. --dry-run prints the plan with the reason for each kept snapshot.")

    @OptionGroup var global: GlobalOptions
    @Option(help: "Keep the N newest snapshots of each disk.") var keepLast = 0
    @Option(help: "Keep the newest snapshot of each of the last N days.") var keepDaily = 0
    @Option(help: "Keep the newest snapshot of each of the last N ISO weeks.") var keepWeekly = 0
    @Option(help: "Keep the newest snapshot of each of the last N months.") var keepMonthly = 0
    @Option(help: "Only this disk (id, name or path).") var disk: String?
    @Flag(help: "Print the plan; delete nothing.") var dryRun = false
    @Flag(help: "Print the plan as JSON.") var json = false

    func validate() throws {
        guard [keepLast, keepDaily, keepWeekly, keepMonthly].allSatisfy({ $0 >= 0 }) else { throw ValidationError("keep counts are 0 or more") }
        guard keepLast + keepDaily + keepWeekly + keepMonthly > 0 else {
            throw ValidationError("a policy must keep something: give --keep-last, --keep-daily, --keep-weekly or --keep-monthly")
        }
    }

    func run() throws {
        try runReporting(json: json) {
            let plan = try Pruner(repository: try global.openRepository())
                .prune(rule: .init(keepLast: keepLast, keepDaily: keepDaily, keepWeekly: keepWeekly, keepMonthly: keepMonthly),
                       disk: disk, dryRun: dryRun)
            let deleted = dryRun ? [] : plan.filter { !$0.keep }.map(\.record.snapshotId.rawValue)
            if json {
                Output.json(PruneResponse(dryRun: dryRun, deleted: deleted, plan: plan.map {
                    .init(snapshotId: $0.record.snapshotId.rawValue, snapshotName: $0.record.snapshotName,
                          sourceDiskId: $0.record.sourceDiskId?.rawValue, creationTime: $0.record.creationTime, keep: $0.keep, reasons: $0.reasons)
                }))
                return
            }
            for d in plan {
                Output.line("\(d.keep ? "keep  " : (dryRun ? "would remove" : "removed")) \(d.record.snapshotId) \(d.record.snapshotName) \(d.record.creationTime)\(d.keep ? "  (" + d.reasons.joined(separator: ", ") + ")" : "")")
            }
            let removed = plan.filter { !$0.keep }.count
            Output.line("\(plan.count - removed) kept, \(removed) \(dryRun ? "would be removed" : "removed")\(dryRun || removed == 0 ? "" : "; run 'disksnap gc' to free their chunks")")
        }
    }
}

struct PruneResponse: Encodable {
    struct Item: Encodable {
        var snapshotId: String
        var snapshotName: String
        var sourceDiskId: String?
        var creationTime: String
        var keep: Bool
        var reasons: [String]
    }
    var dryRun: Bool
    var deleted: [String]
    var plan: [Item]
}
