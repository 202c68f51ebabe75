import DiskSnapSys
import DiskSnapEngine

/// A disk identity as a person reads it: the table, then one line per partition.
enum IdentityText {
    static func render(_ d: DiskIdentity) -> String {
        var rows: [[String]] = [["Size", "\(d.size) (\(ByteFormat.human(d.size)))"]]
        if let l = d.logicalSectorSize { rows.append(["SectorSize", "\(l) logical, \(d.physicalSectorSize.map(String.init) ?? "?") physical"]) }
        rows.append(["PartitionTable", d.partitionTableType.map { $0 + (d.partitionTableUUID.map { " \($0)" } ?? "") } ?? "none"])
        if let problem = d.problem { rows.append(["Problem", problem]) }
        if let content = d.content { rows.append(["Content", describe(content)]) }
        var text = Table.format(rows)
        if !d.partitions.isEmpty {
            text += "\n\n" + Table.format([["#", "START", "SIZE", "TYPE", "PARTUUID", "NAME", "CONTENT"]] + d.partitions.map {
                ["\($0.number)", "\($0.start)", ByteFormat.human($0.size), $0.type, $0.uuid ?? "-", $0.name ?? "-",
                 $0.content.map(describe) ?? "-"]
            })
        }
        return text
    }

    static func describe(_ f: FilesystemInfo) -> String {
        [f.type, f.version.map { "v\($0)" }, f.usage.map { "(\($0))" }, f.uuid.map { "UUID=\($0)" }, f.label.map { "LABEL=\($0)" }]
            .compactMap { $0 }.joined(separator: " ")
    }
}
