import ArgumentParser
import DiskSnapSys
import DiskSnapFormat
import DiskSnapCatalog
import DiskSnapEngine

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one snapshot, by id or name.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Snapshot id or name.")
    var snapshot: String
    @Flag(help: "Print the snapshot as a JSON object.")
    var json = false

    func run() throws {
        try runReporting(json: json) {
            let r = try Catalog(repository: try global.openRepository()).find(snapshot)
            if json {
                Output.json(r)
                return
            }
            var rows: [[String]] = [
                ["SnapshotId", r.snapshotId.rawValue], ["SnapshotName", r.snapshotName], ["Description", r.description],
                ["Status", r.status.rawValue + (r.status == .progressing ? " \(r.progress)" : "") + (r.failureReason.map { " (\($0))" } ?? "")],
                ["SourceDiskId", (r.sourceDiskId?.rawValue ?? "-") + (r.sourceDiskType.map { " (\($0))" } ?? "")],
                ["Tags", r.tags.isEmpty ? "-" : r.tags.map { $0.value.isEmpty ? $0.key : "\($0.key)=\($0.value)" }.joined(separator: ", ")],
                ["Automatic", r.automatic ? "yes" : "no"],
                ["SourcePath", r.sourcePath], ["SourceKind", r.sourceKind.rawValue],
                ["SourceSize", "\(r.sourceSize) (\(ByteFormat.human(r.sourceSize)))"],
                ["ChunkSize", "\(r.chunkSize)"], ["CreationTime", r.creationTime],
                ["BytesRead", "\(r.bytesRead) (\(ByteFormat.human(r.bytesRead)))"],
                ["BytesStoredNew", "\(r.bytesStoredNew) (\(ByteFormat.human(r.bytesStoredNew)))"],
                ["ChunksUnchanged", r.chunksUnchanged.map { "\($0) (same as the previous snapshot)" } ?? "-"],
                ["ZeroBytes", "\(r.zeroBytes) (\(ByteFormat.human(r.zeroBytes)))"],
                ["CrashConsistent", r.crashConsistent ? "yes" : "no (source changed while read)"],
            ]
            if let method = r.consistencyMethod { rows.append(["ConsistencyMethod", method]) }
            if let tracking = r.changeTracking {
                rows.append(["ChangeTracking", tracking.baseSnapshotId.map { "incremental from \($0): \(ByteFormat.human(tracking.changedBytes ?? 0)) changed" }
                             ?? "full read: \(tracking.fullReadReason ?? "-")"])
                if let node = tracking.node {
                    rows.append(["Bitmap", tracking.bitmap.map { "\($0) on node \(node)" } ?? "none (node \(node))"])
                }
            }
            if r.guestFrozen == true {
                rows.append(["GuestFrozen", "yes: \(r.frozenFilesystems ?? 0) filesystem(s), writes held \(r.freezeMilliseconds ?? 0) ms"])
            }
            if let kept = r.keptClone {
                rows.append(["KeptClone", "\(kept.path) (\(ReflinkClone.describeKept(kept.path)))"])
            }
            if let change = r.identityChange { rows.append(["IdentityChange", change]) }
            if let origin = r.copiedFrom { rows.append(["CopiedFrom", "repository \(origin)" + (r.copyTime.map { ", copied \($0)" } ?? "")]) }
            Output.line(Table.format(rows))
            if let identity = r.identity { Output.line("\n" + IdentityText.render(identity)) }
        }
    }
}
