import DiskSnapSys

/// Is the disk at a path still the disk registered there? A pure comparison of identities.
public enum IdentityPolicy {
    public enum Verdict: Equatable, Sendable {
        case same
        /// The same disk, changed in a way worth recording in the snapshot.
        case changed(String)
        /// Another disk sits at the path.
        case different(String)
    }

    /// Another disk: a different partition-table UUID, or a different size with none of the
    /// old filesystem UUIDs left. Grown or repartitioned disks are the same disk, changed.
    public static func compare(recorded: DiskIdentity, now: DiskIdentity) -> Verdict {
        if let old = recorded.partitionTableUUID, let new = now.partitionTableUUID, old.lowercased() != new.lowercased() {
            return .different("partition table UUID was \(old), is now \(new)")
        }
        let oldUUIDs = Set(recorded.filesystems.compactMap(\.uuid)), newUUIDs = Set(now.filesystems.compactMap(\.uuid))
        if recorded.size != now.size && !oldUUIDs.isEmpty && oldUUIDs.isDisjoint(with: newUUIDs) {
            return .different("size was \(recorded.size) bytes, is now \(now.size), and none of its filesystem UUIDs (\(oldUUIDs.sorted().joined(separator: ", "))) is there")
        }
        var changes: [String] = []
        if now.size > recorded.size { changes.append("grown from \(recorded.size) to \(now.size) bytes") }
        if now.size < recorded.size { changes.append("shrunk from \(recorded.size) to \(now.size) bytes") }
        let layout = { (i: DiskIdentity) in i.partitions.map { "\($0.number):\($0.start):\($0.size):\($0.type)" } }
        if layout(recorded) != layout(now) {
            changes.append("repartitioned (\(recorded.partitions.count) -> \(now.partitions.count) partitions)")
        }
        if recorded.partitionTableType != now.partitionTableType {
            changes.append("partition table \(recorded.partitionTableType ?? "none") -> \(now.partitionTableType ?? "none")")
        }
        return changes.isEmpty ? .same : .changed(changes.joined(separator: "; "))
    }
}
