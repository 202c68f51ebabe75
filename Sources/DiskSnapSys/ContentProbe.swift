import CBlkid

/// What libblkid finds at the start of a disk: a partition table or a filesystem.
/// The full identity (each partition, its filesystem) is issue #4's DiskIdentity.
public struct ContentSummary: Sendable, Equatable, Codable {
    /// Partition table type (`gpt`, `dos`), when there is one.
    public var partitionTableType: String?
    public var partitionTableUUID: String?
    /// Filesystem or other content on the whole disk (`ext4`, `swap`, `LVM2_member`).
    public var contentType: String?
    public var contentUUID: String?
    public var contentLabel: String?

    public init() {}
    public var isEmpty: Bool { self == ContentSummary() }
}

public enum ContentProbe {
    /// Probes `path` read-only. A disk libblkid cannot identify gives an empty summary; an
    /// ambiguous one (two signatures) also does, since libblkid then refuses to choose.
    public static func probe(path: String) -> ContentSummary {
        var summary = ContentSummary()
        guard let probe = blkid_new_probe_from_filename(path) else { return summary }
        defer { blkid_free_probe(probe) }
        blkid_probe_enable_superblocks(probe, 1)
        blkid_probe_set_superblocks_flags(probe, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID | BLKID_SUBLKS_LABEL)
        blkid_probe_enable_partitions(probe, 1)
        blkid_probe_set_partitions_flags(probe, BLKID_PARTS_ENTRY_DETAILS)
        guard blkid_do_safeprobe(probe) == 0 else { return summary }
        func value(_ name: String) -> String? {
            var data: UnsafePointer<CChar>?
            var length = 0
            guard blkid_probe_lookup_value(probe, name, &data, &length) == 0, let data else { return nil }
            return String(cString: data)
        }
        summary.partitionTableType = value("PTTYPE")
        summary.partitionTableUUID = value("PTUUID")
        summary.contentType = value("TYPE")
        summary.contentUUID = value("UUID")
        summary.contentLabel = value("LABEL")
        return summary
    }
}
