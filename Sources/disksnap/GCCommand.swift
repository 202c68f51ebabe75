import ArgumentParser
import DiskSnapEngine

struct GC: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Remove chunks no snapshot references; rewrite packs that are mostly garbage.",
        discussion: "Safe while snapshots are being created: packs condemned while a creation runs are removed by a later gc, after it has ended (docs/DESIGN.md, \"Garbage collection\").")

    @OptionGroup var global: GlobalOptions
    @Flag(help: "Report what would be condemned; change nothing.")
    var dryRun = false
    @Option(help: "Rewrite packs whose live share of bytes is below this fraction (0-1).")
    var liveThreshold = 0.8
    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        guard (0...1).contains(liveThreshold) else { throw ValidationError("--live-threshold is a fraction from 0 to 1") }
    }

    func run() throws {
        try runReporting(json: json) {
            var request = GCRequest()
            request.dryRun = dryRun
            request.liveThreshold = liveThreshold
            let r = try GarbageCollector(repository: try global.openRepository()).run(request)
            if json {
                Output.json(GCResponse(r))
                return
            }
            let condemned = "\(r.packsCondemned) packs condemned (\(ByteFormat.human(r.deadBytes)) dead, \(ByteFormat.human(r.liveBytesToCopy)) live to copy)"
            if r.dryRun {
                Output.line("dry run: \(condemned)" + (r.deferred.map { "; \($0)" } ?? ""))
                return
            }
            Output.line("gc: \(condemned); \(r.packsRemoved) packs removed, \(r.chunksCopied) chunks copied, \(r.segmentsReplaced) index segments rewritten, \(r.segmentsCompacted) compacted, \(r.orphanFixedIndexesRemoved) orphan fixed indexes removed\(r.deadLeasesRemoved > 0 ? ", \(r.deadLeasesRemoved) dead leases removed" : ""); \(r.bytesFreed >= 0 ? ByteFormat.human(UInt64(r.bytesFreed)) : "-" + ByteFormat.human(UInt64(-r.bytesFreed))) freed in \(String(format: "%.2f", r.seconds)) s")
            if let deferred = r.deferred { Output.line("deferred: \(deferred)") }
        }
    }
}

struct GCResponse: Encodable {
    var dryRun: Bool
    var generation: UInt64
    var packsCondemned: Int
    var deadBytes: UInt64
    var liveBytesToCopy: UInt64
    var packsRemoved: Int
    var chunksCopied: UInt64
    var segmentsReplaced: Int
    var segmentsCompacted: Int
    var orphanFixedIndexesRemoved: Int
    var deadLeasesRemoved: Int
    var bytesFreed: Int64
    var deferred: String?
    var seconds: Double

    init(_ r: GCResult) {
        dryRun = r.dryRun
        generation = r.generation
        packsCondemned = r.packsCondemned
        deadBytes = r.deadBytes
        liveBytesToCopy = r.liveBytesToCopy
        packsRemoved = r.packsRemoved
        chunksCopied = r.chunksCopied
        segmentsReplaced = r.segmentsReplaced
        segmentsCompacted = r.segmentsCompacted
        orphanFixedIndexesRemoved = r.orphanFixedIndexesRemoved
        deadLeasesRemoved = r.deadLeasesRemoved
        bytesFreed = r.bytesFreed
        deferred = r.deferred
        seconds = r.seconds
    }
}
