import ArgumentParser
import DiskSnapEngine

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stats", abstract: "Repository totals: chunks, stored bytes, packs, snapshots.")

    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print the totals as JSON.")
    var json = false

    func run() throws {
        try runReporting(json: json) {
            let s = try RepositoryStats.gather(try global.openRepository())
            if json {
                Output.json(s)
                return
            }
            let ratio = s.storedBytes > 0 ? Double(s.logicalBytes) / Double(s.storedBytes) : 0
            Output.line(Table.format([
                ["Repository", s.repository], ["ChunkSize", "\(s.chunkSize)"], ["Compression", s.compression],
                ["Profile", s.profile + (s.maxSnapshots.map { " (at most \($0) snapshots)" } ?? "")], ["Disks", "\(s.diskCount)"],
                ["Snapshots", "\(s.snapshotCount)"], ["Chunks", "\(s.chunkCount)"],
                ["StoredBytes", "\(s.storedBytes) (\(ByteFormat.human(s.storedBytes)))"],
                ["RawBytes", "\(s.rawBytes) (\(ByteFormat.human(s.rawBytes)))"],
                ["Packs", "\(s.packCount) (\(ByteFormat.human(s.packBytes)))"],
                ["LogicalBytes", "\(s.logicalBytes) (\(ByteFormat.human(s.logicalBytes)))"],
                ["Reduction", String(format: "%.1fx", ratio)],
            ]))
        }
    }
}
