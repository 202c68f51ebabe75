import ArgumentParser
import DiskSnapFormat
import DiskSnapCatalog
import DiskSnapStore
import DiskSnapEngine

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List snapshots, oldest first.")

    @OptionGroup var global: GlobalOptions
    @Option(help: "Only snapshots of this disk (id, name or path).")
    var disk: String?
    @Option(help: "Only snapshots with this name.")
    var name: String?
    @Option(help: "Only snapshots with this status: progressing, accomplished or failed.")
    var status: String?
    @Option(name: .customLong("tag"), help: "Only snapshots with this tag: KEY or KEY=VALUE (repeatable; all must match).")
    var tags: [String] = []
    @Option(help: "Only snapshots holding a filesystem with this UUID (at snapshot time).")
    var fsUuid: String?
    @Option(help: "Only snapshots holding a filesystem with this label (at snapshot time).")
    var fsLabel: String?
    @Flag(help: "Print an array of snapshot objects as JSON.")
    var json = false

    func run() throws {
        try runReporting(json: json) {
            let repository = try global.openRepository()
            var (records, damaged) = try Catalog(repository: repository).records()
            if let disk {
                let id = try DiskRegistry(repository: repository).get(disk).diskId
                records = records.filter { $0.sourceDiskId == id }
            }
            if let name { records = records.filter { $0.snapshotName == name } }
            if let status {
                guard let wanted = SnapshotStatus(rawValue: status) else {
                    throw CatalogError.invalid("InvalidParameter.Status", "status '\(status)' is not progressing, accomplished, failed or damaged")
                }
                records = records.filter { $0.status == wanted }
            }
            if let fsUuid {
                records = records.filter { $0.identity?.filesystems.contains { $0.uuid?.lowercased() == fsUuid.lowercased() } == true }
            }
            if let fsLabel { records = records.filter { $0.identity?.filesystems.contains { $0.label == fsLabel } == true } }
            for filter in tags {
                let parts = filter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                records = records.filter { $0.tags.contains { $0.key == parts[0] && (parts.count == 1 || $0.value == parts[1]) } }
            }
            for error in damaged { Output.warning("\(error.code): \(error.message) (run 'disksnap check')") }
            if json {
                Output.json(records)
                return
            }
            Output.line(Table.format([["ID", "NAME", "DISK", "STATUS", "SIZE", "STORED NEW", "CREATED", "SOURCE"]] + records.map {
                [$0.snapshotId.rawValue, $0.snapshotName, $0.sourceDiskId?.rawValue ?? "-",
                 $0.status == .progressing ? "progressing \($0.progress)" : $0.status.rawValue, ByteFormat.human($0.sourceSize),
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
