import Testing
@testable import DiskSnapCatalog
@testable import DiskSnapEngine
import DiskSnapFormat
@testable import DiskSnapSys

/// One row per (profile, name): nil means valid, otherwise the exact error code.
let nameCases: [(Profile, String, String?)] = {
    let a = { (n: Int) in "a" + String(repeating: "b", count: n - 1) }
    var rows: [(Profile, String, String?)] = []
    // Lengths: 1, 2, the limit, the limit + 1, for each profile.
    for (profile, low, high) in [(Profile.ecs, 2, 128), (.wuying, 2, 127), (.swas, 2, 50), (.css, 4, 64)] {
        let code = profile.rules.nameMalformedCode
        rows += [(profile, a(low - 1), code), (profile, a(low), nil), (profile, a(high), nil), (profile, a(high + 1), code)]
    }
    rows += [
        (.ecs, "a", "InvalidSnapshotName.Malformed"), (.ecs, String(repeating: "x", count: 127), nil),
        (.ecs, "数据盘快照", nil), (.ecs, "快照:daily-1_a", nil), (.wuying, "数据盘快照", "InvalidSnapshotName.Malformed"),
        (.swas, "数据盘", nil), (.css, "快照快照", "InvalidSnapshotName.Malformed"),
        (.ecs, "auto-daily", "InvalidSnapshotName.Malformed"), (.ecs, "Auto-daily", "InvalidSnapshotName.Malformed"),
        (.wuying, "autox", "InvalidSnapshotName.Malformed"), (.swas, "AUTO1", "InvalidSnapshotName.ValueNotSupported"),
        (.css, "auto-daily", nil),
        (.ecs, "http://x", "InvalidSnapshotName.Malformed"), (.ecs, "https://x", "InvalidSnapshotName.Malformed"),
        (.ecs, "HTTP://x", "InvalidSnapshotName.Malformed"), (.swas, "https://x", "InvalidSnapshotName.ValueNotSupported"),
        (.ecs, "db:backup", nil), (.wuying, "db:backup", "InvalidSnapshotName.Malformed"), (.css, "db:backup", "InvalidSnapshotName.Malformed"),
        (.ecs, "1abc", "InvalidSnapshotName.Malformed"), (.css, "_abcd", "InvalidSnapshotName.Malformed"),
        (.ecs, "has space", "InvalidSnapshotName.Malformed"), (.ecs, "semi;colon", "InvalidSnapshotName.Malformed"),
        (.wuying, "snap_2-x", nil), (.css, "Snap_2-x", nil), (.ecs, "", "InvalidSnapshotName.Malformed"),
    ]
    return rows
}()

@Suite struct ProfileRuleTests {
    @Test(arguments: nameCases)
    func names(profile: Profile, name: String, code: String?) {
        do {
            try profile.rules.validateName(name)
            #expect(code == nil, "\(profile) accepted '\(name)'")
        } catch {
            #expect(error.code == code, "\(profile) '\(name)': \(error.message)")
            #expect(name.isEmpty || error.message.contains(name.prefix(20)))
        }
    }

    @Test func automaticRunnerMayUseAuto() throws {
        try Profile.ecs.rules.validateName("auto-20261124", automatic: true)
    }

    @Test(arguments: [
        (Profile.ecs, "", true), (.ecs, "x", false), (.ecs, "ok", true), (.ecs, String(repeating: "d", count: 256), true),
        (.ecs, String(repeating: "d", count: 257), false), (.ecs, "http://x", false), (.ecs, "https://x", false),
        (.wuying, String(repeating: "d", count: 128), true), (.wuying, String(repeating: "d", count: 129), false), (.wuying, "x", true),
        (.swas, String(repeating: "d", count: 256), true), (.css, String(repeating: "d", count: 256), true),
        (.css, String(repeating: "d", count: 257), false),
        (.css, "a!b", false), (.css, "a<b", false), (.css, "a>b", false), (.css, "a'b", false), (.css, "a=b", false),
        (.css, "a&b", false), (.css, "a\"b", false), (.css, "plain text", true), (.ecs, "a!b<c>", true),
    ])
    func descriptions(profile: Profile, text: String, valid: Bool) {
        do {
            try profile.rules.validateDescription(text)
            #expect(valid, "\(profile) accepted '\(text)'")
        } catch {
            #expect(!valid && error.code == "InvalidDescription.Malformed")
        }
    }

    @Test func cssNamesAreUniqueWithoutRegardToCase() {
        #expect(Profile.css.rules.sameName("Daily", "dAILY"))
        #expect(!Profile.ecs.rules.sameName("Daily", "daily"))
    }
}

@Suite struct TagAndTokenTests {
    @Test(arguments: [
        ("k=v", nil), ("k=", nil), ("k", nil), ("=v", "InvalidParameter.TagKey"),
        (String(repeating: "k", count: 64) + "=v", nil), (String(repeating: "k", count: 65) + "=v", "InvalidParameter.TagKey"),
        ("acs:x=v", "InvalidParameter.TagKey"), ("aliyunX=v", "InvalidParameter.TagKey"), ("ACS:x=v", "InvalidParameter.TagKey"),
        ("my-http://x=v", "InvalidParameter.TagKey"), ("k=see https://x", "InvalidParameter.TagValue"),
        ("k=" + String(repeating: "v", count: 64), nil), ("k=" + String(repeating: "v", count: 65), "InvalidParameter.TagValue"),
        ("k=a=b", nil),
    ] as [(String, String?)])
    func tags(text: String, code: String?) {
        do {
            _ = try Tag(parsing: text)
            #expect(code == nil, "accepted '\(text)'")
        } catch {
            #expect(error.code == code)
        }
    }

    @Test func tagCountAndDuplicates() throws {
        let twenty = try (1...20).map { try Tag(key: "k\($0)", value: "") }
        try Tag.validate(twenty)
        #expect(throws: CatalogError.self) { try Tag.validate(twenty + [try Tag(key: "k21", value: "")]) }
        #expect(throws: CatalogError.self) { try Tag.validate([try Tag(key: "a", value: "1"), try Tag(key: "a", value: "2")]) }
    }

    @Test func clientTokens() throws {
        _ = try ClientToken("123e4567-e89b-12d3-a456-426655440000")
        _ = try ClientToken(String(repeating: "t", count: 64))
        for bad in ["", String(repeating: "t", count: 65), "tök", "has space"] {
            #expect(throws: CatalogError.self) { try ClientToken(bad) }
        }
    }
}

@Suite struct QuotaPolicyTests {
    func disk(_ instance: String? = nil) -> DiskRecord {
        DiskRecord(diskId: .generate(), diskName: "d", path: "/d", diskType: "data", instance: instance)
    }
    func snapshots(_ count: Int, of disk: DiskRecord) -> [SnapshotRecord] {
        (0..<count).map { i in
            var r = SnapshotRecord(snapshotId: .generate(), snapshotName: "s\(i)", description: "", sourcePath: "/d",
                                   sourceKind: .file, sourceSize: 1, chunkSize: 65536)
            r.sourceDiskId = disk.diskId
            return r
        }
    }

    @Test func sixtyFourPerDisk() throws {
        let d = disk()
        try QuotaPolicy.check(rules: Profile.ecs.rules, disk: d, disks: [d], live: snapshots(63, of: d), repositoryCap: nil)
        do {
            try QuotaPolicy.check(rules: Profile.ecs.rules, disk: d, disks: [d], live: snapshots(64, of: d), repositoryCap: nil)
            Issue.record("65th allowed")
        } catch { #expect(error.code == "QuotaExceed.Snapshot" && error.exitStatus == .quota && error.httpStatus == 403) }
        // Another disk is not affected by this one's count.
        let other = disk()
        try QuotaPolicy.check(rules: Profile.ecs.rules, disk: other, disks: [d, other], live: snapshots(64, of: d), repositoryCap: nil)
    }

    @Test func simpleApplicationServerLimits() throws {
        let a1 = disk("vm-a"), a2 = disk("vm-a"), b = disk("vm-b")
        let rules = Profile.swas.rules
        // 3 per instance, counted over all of its disks.
        let onA = snapshots(2, of: a1) + snapshots(1, of: a2)
        #expect(throws: CatalogError.self) { try QuotaPolicy.check(rules: rules, disk: a2, disks: [a1, a2, b], live: onA, repositoryCap: nil) }
        try QuotaPolicy.check(rules: rules, disk: b, disks: [a1, a2, b], live: onA, repositoryCap: nil)
        // Account cap: 3 x instances, never above 15.
        let many = (0..<6).map { disk("vm-\($0)") }
        let full = many.prefix(5).flatMap { snapshots(3, of: $0) }
        do {
            try QuotaPolicy.check(rules: rules, disk: many[5], disks: many, live: full, repositoryCap: nil)
            Issue.record("16th allowed")
        } catch { #expect(error.code == "SnapshotLimitExceed" && error.message.contains("15")) }
    }

    @Test func repositoryCapAndUniqueNames() throws {
        let d = disk()
        #expect(throws: CatalogError.self) { try QuotaPolicy.check(rules: Profile.css.rules, disk: d, disks: [d], live: snapshots(2, of: d), repositoryCap: 2) }
        let live = snapshots(1, of: d)  // named "s0"
        #expect(throws: CatalogError.self) { try QuotaPolicy.checkUniqueName(rules: Profile.ecs.rules, name: "s0", disk: d, live: live) }
        try QuotaPolicy.checkUniqueName(rules: Profile.ecs.rules, name: "S0", disk: d, live: live)
        #expect(throws: CatalogError.self) { try QuotaPolicy.checkUniqueName(rules: Profile.css.rules, name: "S0", disk: d, live: live) }
        try QuotaPolicy.checkUniqueName(rules: Profile.ecs.rules, name: "s0", disk: disk(), live: live)
    }
}

@Suite struct WorkPlanTests {
    @Test func runsCoverDataChunksOnly() {
        let ranges = [ByteRange(start: 0, end: 10), ByteRange(start: 300, end: 700), ByteRange(start: 5000, end: 5001)]
        let runs = WorkPlan.runs(dataRanges: ranges, chunkSize: 100, maxChunks: 3)
        #expect(runs.map { [$0.first, $0.end] } == [[0, 1], [3, 6], [6, 7], [50, 51]])
    }

    @Test func adjacentRangesMerge() {
        let runs = WorkPlan.runs(dataRanges: [ByteRange(start: 0, end: 150), ByteRange(start: 150, end: 400)], chunkSize: 100, maxChunks: 10)
        #expect(runs.map { [$0.first, $0.end] } == [[0, 4]])
    }

    @Test func mountInfoParsing() {
        let text = """
        36 35 7:3 / /mnt/a\\040b rw,noatime shared:1 - ext4 /dev/loop3 rw
        37 35 7:4 / /mnt/c ro,relatime - ext4 /dev/loop4 ro
        """
        let loop3 = Mounts.mounts(ofDevice: 7 << 8 | 3, mountInfo: text)
        #expect(loop3 == [Mounts.Mount(mountPoint: "/mnt/a b", readWrite: true)])
        #expect(Mounts.mounts(ofDevice: 7 << 8 | 4, mountInfo: text).map(\.readWrite) == [false])
    }
}

@Suite struct AutoPolicyTests {
    let disk = DiskRecord(diskId: .generate(), diskName: "d", path: "/d", diskType: "data", instance: nil)

    func record(_ name: String, automatic: Bool, minute: Int) -> SnapshotRecord {
        var r = SnapshotRecord(snapshotId: .generate(), snapshotName: name, description: "", sourcePath: "/d",
                               sourceKind: .file, sourceSize: 1, chunkSize: 65536)
        r.sourceDiskId = disk.diskId
        r.automatic = automatic
        r.status = .accomplished
        r.creationTime = String(format: "2026-11-24T10:%02d:00.000Z", minute)
        return r
    }

    @Test func makeRoomEvictsOldestAutomaticOnly() throws {
        let live = [record("m1", automatic: false, minute: 1), record("a1", automatic: true, minute: 2),
                    record("a2", automatic: true, minute: 3)]
        let evict = try AutoPolicy.makeRoom(rules: Profile.ecs.rules, disk: disk, disks: [disk], live: live, repositoryCap: 3)
        #expect(evict.map(\.snapshotName) == ["a1"])
        #expect(try AutoPolicy.makeRoom(rules: Profile.ecs.rules, disk: disk, disks: [disk], live: live, repositoryCap: 4).isEmpty)
        let manualOnly = [record("m1", automatic: false, minute: 1), record("m2", automatic: false, minute: 2)]
        #expect(throws: CatalogError.self) {
            try AutoPolicy.makeRoom(rules: Profile.ecs.rules, disk: disk, disks: [disk], live: manualOnly, repositoryCap: 2)
        }
    }

    @Test func expiryByKeepAndRetention() {
        let a = (1...4).map { record("a\($0)", automatic: true, minute: $0) }
        let manual = record("m", automatic: false, minute: 0)
        let now = ISOTime.parse("2026-11-24T10:10:00Z")!
        let keep2 = AutoPolicy.expired(disk: disk, live: a + [manual], keep: 2, retentionDays: nil, now: now, justMade: a[3].snapshotId)
        #expect(keep2.map(\.snapshotName) == ["a2", "a1"])
        let none = AutoPolicy.expired(disk: disk, live: a, keep: 10, retentionDays: 1, now: now, justMade: nil)
        #expect(none.isEmpty)
        let old = AutoPolicy.expired(disk: disk, live: a + [manual], keep: nil, retentionDays: 0, now: now, justMade: a[3].snapshotId)
        #expect(old.map(\.snapshotName) == ["a1", "a2", "a3"])
        #expect(AutoPolicy.name(at: now) == "auto-20261124-101000-000")
        #expect((try? Profile.ecs.rules.validateName(AutoPolicy.name(at: now), automatic: true)) != nil)
    }
}
