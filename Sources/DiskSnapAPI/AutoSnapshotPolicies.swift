import Foundation
import DiskSnapAPIWire
import Synchronization
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapEngine

/// ECS automatic-snapshot policies, run by `disksnap serve`: each policy names hours (UTC)
/// and weekdays; at each of them, every disk it is applied to gets `AutoRunner`'s automatic
/// snapshot (the CLI's `auto`), and automatic snapshots older than its retention go.
struct AutoSnapshotPolicy: Codable, Sendable, Equatable {
    var autoSnapshotPolicyId: String
    var autoSnapshotPolicyName: String
    /// Hours 0-23 (UTC).
    var timePoints: [Int]
    /// 1 (Monday) to 7 (Sunday).
    var repeatWeekdays: [Int]
    /// -1: kept until deleted by hand.
    var retentionDays: Int
    var creationTime: String
    var diskIds: [String] = []
    /// Per disk: the time point last run (or the time it was applied: points before it are
    /// not run late), and the last run's failure.
    var lastRun: [String: String] = [:]
    var lastError: [String: String] = [:]
}

/// `api/auto-snapshot-policies.json` beside the credentials (0600, replaced atomically); the
/// server is its one writer.
struct PolicyStore: Sendable {
    struct File: Codable {
        var formatVersion: Int
        var policies: [AutoSnapshotPolicy]
    }
    static let formatVersion = 1
    let repository: Repository
    var path: String { repository.root + "/api/auto-snapshot-policies.json" }

    func load() throws -> [AutoSnapshotPolicy] {
        guard FileSystem.exists(path) else { return [] }
        let file = try RecordJSON.decode(File.self, from: try repository.readObject(path), file: path)
        guard file.formatVersion == Self.formatVersion else {
            throw APIError("Repository.Corrupt", "\(path) has format version \(file.formatVersion); this disksnap reads \(Self.formatVersion)", status: 500, exit: .corrupt)
        }
        return file.policies
    }

    /// Written atomically, sealed in an encrypted repository.
    func save(_ policies: [AutoSnapshotPolicy]) throws {
        try repository.writeLocalObject(RecordJSON.encode(File(formatVersion: Self.formatVersion, policies: policies)), to: path)
    }
}

/// When a policy is due: pure, over a clock given (the server's, or a faster one in tests).
enum AutoSchedule {
    static let calendar: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }()

    /// The latest time point at or before `now` on one of the weekdays (within the last 8
    /// days), or nil.
    static func latestDue(hours: [Int], weekdays: [Int], atOrBefore now: Date) -> Date? {
        let startOfHour = calendar.dateInterval(of: .hour, for: now)!.start
        for back in 0..<(8 * 24) {
            let candidate = startOfHour.addingTimeInterval(-Double(back) * 3600)
            let hour = calendar.component(.hour, from: candidate)
            // Calendar: 1 is Sunday; the documents: 1 is Monday, 7 Sunday.
            let weekday = (calendar.component(.weekday, from: candidate) + 5) % 7 + 1
            if hours.contains(hour) && weekdays.contains(weekday) { return candidate }
        }
        return nil
    }

    /// The schedule's clock: real time, or with `DISKSNAP_SERVE_HOUR_SECONDS=N` (tests) an
    /// hour every N seconds.
    static func now() -> Date {
        let real = Date()
        guard let text = FileSystem.environment("DISKSNAP_SERVE_HOUR_SECONDS"), let seconds = Double(text), seconds > 0 else { return real }
        return Date(timeIntervalSince1970: real.timeIntervalSince1970 * 3600 / seconds)
    }

    /// How often the scheduler looks: every 20 s, or four times a test hour.
    static var tickSeconds: Double {
        if let text = FileSystem.environment("DISKSNAP_SERVE_HOUR_SECONDS"), let seconds = Double(text), seconds > 0 { return seconds / 4 }
        return 20
    }
}

extension APIService {
    /// Runs the policies until the process ends: at each tick, the disks whose policy has a
    /// time point past their last run get their automatic snapshot, one disk after another.
    func runSchedules() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(Int(AutoSchedule.tickSeconds * 1000)))
            do { try await runDuePolicies() } catch { logProblem("automatic-snapshot policies: \(error)") }
        }
    }

    func runDuePolicies() async throws {
        let now = AutoSchedule.now()
        let due: [(policy: String, disk: String, at: Date, retention: Int)] = try policies.withLock { _ in
            try policyStore.load().flatMap { policy in
                policy.diskIds.compactMap { disk in
                    guard let at = AutoSchedule.latestDue(hours: policy.timePoints, weekdays: policy.repeatWeekdays, atOrBefore: now),
                          let last = policy.lastRun[disk].flatMap(ISOTime.parse), at > last else { return nil }
                    return (policy.autoSnapshotPolicyId, disk, at, policy.retentionDays)
                }
            }
        }
        for item in due {
            let repository = self.repository
            let outcome = await Result(catching: { try await self.blocking {
                try AutoRunner(repository: repository).run(disk: item.disk, keep: nil, retentionDays: item.retention < 0 ? nil : item.retention)
            } })
            try policies.withLock { _ in
                var all = try policyStore.load()
                guard let i = all.firstIndex(where: { $0.autoSnapshotPolicyId == item.policy }) else { return }
                all[i].lastRun[item.disk] = ISOTime.format(item.at)
                if case .failure(let error) = outcome {
                    let text = (error as? any CodedError)?.description ?? "\(error)"
                    all[i].lastError[item.disk] = text
                    logProblem("automatic snapshot of \(item.disk) (policy \(item.policy)) failed: \(text)")
                } else {
                    all[i].lastError[item.disk] = nil
                }
                try policyStore.save(all)
            }
        }
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
