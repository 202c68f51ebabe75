import Foundation
import DiskSnapFormat

/// Which snapshots a retention policy keeps, and why: a pure function of the records, so that
/// `prune --dry-run` shows exactly what `prune` does. Like restic's `forget`: per disk,
/// `keepLast` newest snapshots, and the newest snapshot of each of the last `keepDaily` days
/// (UTC), `keepWeekly` ISO weeks and `keepMonthly` months that have one. Only accomplished
/// snapshots are considered; others are never chosen.
public enum PrunePolicy {
    public struct Rule: Sendable, Equatable {
        public var keepLast = 0
        public var keepDaily = 0
        public var keepWeekly = 0
        public var keepMonthly = 0
        public init(keepLast: Int = 0, keepDaily: Int = 0, keepWeekly: Int = 0, keepMonthly: Int = 0) {
            self.keepLast = keepLast
            self.keepDaily = keepDaily
            self.keepWeekly = keepWeekly
            self.keepMonthly = keepMonthly
        }
        public var keepsSomething: Bool { keepLast + keepDaily + keepWeekly + keepMonthly > 0 }
    }

    public struct Decision: Sendable {
        public var record: SnapshotRecord
        /// Empty: the snapshot is removed.
        public var reasons: [String]
        public var keep: Bool { !reasons.isEmpty }
    }

    /// Decisions for every accomplished snapshot in `records`, newest first within each disk.
    public static func plan(_ records: [SnapshotRecord], rule: Rule) -> [Decision] {
        var decisions: [Decision] = []
        let byDisk = Dictionary(grouping: records.filter { $0.status == .accomplished }) { $0.sourceDiskId?.rawValue ?? $0.sourcePath }
        for disk in byDisk.keys.sorted() {
            let newestFirst = byDisk[disk]!.sorted { ($0.creationTime, $0.snapshotId) > ($1.creationTime, $1.snapshotId) }
            var reasons = [[String]](repeating: [], count: newestFirst.count)
            for i in 0..<min(rule.keepLast, newestFirst.count) { reasons[i].append("last \(i + 1)") }
            for (count, label, bucket) in [(rule.keepDaily, "daily", dayBucket), (rule.keepWeekly, "weekly", weekBucket),
                                           (rule.keepMonthly, "monthly", monthBucket)] where count > 0 {
                var buckets: [String] = []
                for (i, record) in newestFirst.enumerated() {
                    let key = bucket(record.creationTime)
                    guard buckets.last != key else { continue }  // an older snapshot of the same bucket
                    guard buckets.count < count else { break }
                    buckets.append(key)
                    reasons[i].append("\(label) \(key)")
                }
            }
            for (i, record) in newestFirst.enumerated() { decisions.append(Decision(record: record, reasons: reasons[i])) }
        }
        return decisions
    }

    static func date(_ text: String) -> Date { ISOTime.parse(text) ?? Date(timeIntervalSince1970: 0) }

    static func calendar() -> Calendar {
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }

    static func dayBucket(_ time: String) -> String { String(time.prefix(10)) }
    static func monthBucket(_ time: String) -> String { String(time.prefix(7)) }
    static func weekBucket(_ time: String) -> String {
        let parts = calendar().dateComponents([.yearForWeekOfYear, .weekOfYear], from: date(time))
        return String(format: "%04d-W%02d", parts.yearForWeekOfYear ?? 0, parts.weekOfYear ?? 0)
    }
}
