import DiskSnapFormat

/// Whether one more snapshot of `disk` is allowed: a pure function of the rules, the disks
/// and the live snapshots (`progressing` and `accomplished`; failed ones do not count).
public enum QuotaPolicy {
    public static func check(rules: RuleSet, disk: DiskRecord, disks: [DiskRecord], live: [SnapshotRecord],
                             repositoryCap: Int?) throws(CatalogError) {
        if let cap = repositoryCap, live.count >= cap {
            throw .quota(rules.quotaCode, "the repository holds \(live.count) snapshots; its cap is \(cap)")
        }
        let onDisk = live.filter { $0.sourceDiskId == disk.diskId }.count
        if let perDisk = rules.snapshotsPerDisk, onDisk >= perDisk {
            throw .quota(rules.quotaCode, "disk \(disk.diskId) (\(disk.diskName)) has \(onDisk) snapshots; at most \(perDisk) are allowed per disk")
        }
        if rules.profile == .swas {
            let instance = disk.instance ?? disk.diskId.rawValue  // a disk without an instance is its own server
            let diskInstance = Dictionary(uniqueKeysWithValues: disks.map { ($0.diskId, $0.instance ?? $0.diskId.rawValue) })
            let onInstance = live.filter { $0.sourceDiskId.flatMap { diskInstance[$0] } == instance }.count
            if onInstance >= RuleSet.snapshotsPerInstance {
                throw .quota(rules.quotaCode, "instance \(instance) has \(onInstance) snapshots; at most \(RuleSet.snapshotsPerInstance) are allowed per instance")
            }
            let instances = Set(diskInstance.values).count
            let accountCap = min(RuleSet.snapshotsPerInstance * instances, RuleSet.accountCapCeiling)
            if live.count >= accountCap {
                throw .quota(rules.quotaCode, "the repository has \(live.count) snapshots over \(instances) instances; the cap is \(accountCap) (3 per instance, at most 15)")
            }
        }
    }

    /// A name already used by a live snapshot of the same disk.
    public static func checkUniqueName(rules: RuleSet, name: String, disk: DiskRecord, live: [SnapshotRecord]) throws(CatalogError) {
        if let clash = live.first(where: { $0.sourceDiskId == disk.diskId && rules.sameName($0.snapshotName, name) }) {
            throw .invalid("InvalidSnapshotName.Duplicate", "disk \(disk.diskName) already has a snapshot named '\(clash.snapshotName)' (\(clash.snapshotId))")
        }
    }
}
