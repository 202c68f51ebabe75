import Foundation
import DiskSnapFormat

/// The automatic-snapshot policy as pure functions: which automatic snapshots must go to make
/// room for a new one, and which have expired. Manual snapshots are never chosen.
public enum AutoPolicy {
    /// The prefix of automatic snapshot names; users cannot create it by hand (`RuleSet`).
    public static func name(at date: Date) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd-HHmmss-SSS"
        return "auto-" + f.string(from: date)
    }

    /// The oldest automatic snapshots of `disk` whose removal lets one more snapshot pass
    /// the quota; throws the quota error when even removing all of them is not enough.
    public static func makeRoom(rules: RuleSet, disk: DiskRecord, disks: [DiskRecord], live: [SnapshotRecord],
                                repositoryCap: Int?) throws(CatalogError) -> [SnapshotRecord] {
        let candidates = automatic(of: disk, in: live)
        var evict: [SnapshotRecord] = []
        while true {
            let remaining = live.filter { r in !evict.contains { $0.snapshotId == r.snapshotId } }
            do {
                try QuotaPolicy.check(rules: rules, disk: disk, disks: disks, live: remaining, repositoryCap: repositoryCap)
                return evict
            } catch {
                guard evict.count < candidates.count else { throw error }
                evict.append(candidates[evict.count])
            }
        }
    }

    /// Automatic snapshots of `disk` beyond the newest `keep`, or older than `retentionDays`;
    /// `justMade` is never chosen.
    public static func expired(disk: DiskRecord, live: [SnapshotRecord], keep: Int?, retentionDays: Int?,
                               now: Date, justMade: SnapshotID?) -> [SnapshotRecord] {
        let autos = automatic(of: disk, in: live).filter { $0.snapshotId != justMade }
        var chosen: [SnapshotRecord] = []
        if let keep {
            // prune's keep-last rule, the snapshot just made counting as one of those kept.
            let kept = PrunePolicy.plan(autos, rule: .init(keepLast: max(0, keep - (justMade == nil ? 0 : 1))))
            chosen += kept.filter { !$0.keep }.map(\.record)
        }
        if let days = retentionDays {
            let limit = now.addingTimeInterval(-Double(days) * 86_400)
            chosen += autos.filter { (ISOTime.parse($0.creationTime) ?? now) < limit }
        }
        var seen = Set<SnapshotID>()
        return chosen.filter { seen.insert($0.snapshotId).inserted }
    }

    /// Accomplished automatic snapshots of `disk`, oldest first.
    static func automatic(of disk: DiskRecord, in live: [SnapshotRecord]) -> [SnapshotRecord] {
        live.filter { $0.automatic && $0.sourceDiskId == disk.diskId && $0.status == .accomplished }
            .sorted { ($0.creationTime, $0.snapshotId) < ($1.creationTime, $1.snapshotId) }
    }
}
