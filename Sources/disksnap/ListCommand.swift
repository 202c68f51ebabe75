import ArgumentParser
import DiskSnapFormat
import DiskSnapCatalog
import DiskSnapEngine

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List snapshots, oldest first.")

    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print an array of snapshot objects as JSON.")
    var json = false

    func run() throws {
        try runReporting(json: json) {
            let (records, damaged) = try Catalog(repository: try global.openRepository()).records()
            for error in damaged { Output.warning("\(error.code): \(error.message) (run 'disksnap check')") }
            if json {
                Output.json(records)
                return
            }
            Output.line(Table.format([["ID", "NAME", "STATUS", "SIZE", "STORED NEW", "CREATED", "SOURCE"]] + records.map {
                [$0.snapshotId.rawValue, $0.snapshotName, $0.status.rawValue, ByteFormat.human($0.sourceSize),
                 ByteFormat.human($0.bytesStoredNew), $0.creationTime, $0.sourcePath]
            }))
        }
    }
}

enum Table {
    static func format(_ rows: [[String]]) -> String {
        let widths = rows.reduce(into: [Int](repeating: 0, count: rows.first?.count ?? 0)) { widths, row in
            for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) }
        }
        return rows.map { row in
            row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
        }.joined(separator: "\n")
    }
}
