import Testing
@testable import DiskSnapFormat
@testable import DiskSnapStore
@testable import DiskSnapCatalog

@Suite struct PrunePolicyTests {
    func record(_ name: String, _ time: String, disk: String = "/d", status: SnapshotStatus = .accomplished) -> SnapshotRecord {
        var r = SnapshotRecord(snapshotId: .generate(), snapshotName: name, description: "", sourcePath: disk,
                               sourceKind: .file, sourceSize: 1, chunkSize: 65536)
        r.status = status
        r.creationTime = time
        return r
    }

    func kept(_ decisions: [PrunePolicy.Decision]) -> [String] { decisions.filter(\.keep).map(\.record.snapshotName) }

    @Test func dailyWeeklyMonthlyKeepTheNewestOfEachBucket() {
        let records = [
            record("jan-a", "2026-01-05T10:00:00.000Z"), record("jan-b", "2026-01-20T10:00:00.000Z"),
            record("feb", "2026-02-03T10:00:00.000Z"),  // ISO week 2026-W06
            record("mon-early", "2026-11-23T01:00:00.000Z"), record("mon-late", "2026-11-23T23:00:00.000Z"),  // W48
            record("tue", "2026-11-24T12:00:00.000Z"), record("failed", "2026-11-25T00:00:00.000Z", status: .failed),
        ]
        #expect(kept(PrunePolicy.plan(records, rule: .init(keepDaily: 2))) == ["tue", "mon-late"])
        #expect(kept(PrunePolicy.plan(records, rule: .init(keepWeekly: 2))) == ["tue", "feb"])
        #expect(kept(PrunePolicy.plan(records, rule: .init(keepMonthly: 3))) == ["tue", "feb", "jan-b"])
        let both = PrunePolicy.plan(records, rule: .init(keepLast: 1, keepMonthly: 1))
        #expect(kept(both) == ["tue"])
        #expect(both.first?.reasons == ["last 1", "monthly 2026-11"])
        #expect(!both.contains { $0.record.snapshotName == "failed" }, "only accomplished snapshots are planned")
    }

    @Test func eachDiskIsPlannedOnItsOwn() {
        let records = [record("a1", "2026-11-01T00:00:00.000Z", disk: "/a"), record("a2", "2026-11-02T00:00:00.000Z", disk: "/a"),
                       record("b1", "2026-11-01T00:00:00.000Z", disk: "/b")]
        #expect(Set(kept(PrunePolicy.plan(records, rule: .init(keepLast: 1)))) == ["a2", "b1"])
        #expect(kept(PrunePolicy.plan(records, rule: .init())) == [], "a rule that keeps nothing removes everything")
    }
}

@Suite struct DigestFilterTests {
    @Test func neverForgetsAndRarelyImagines() {
        var filter = DigestFilter(expected: 10_000)
        let inserted = (0..<10_000).map { i in withUnsafeBytes(of: i) { ChunkDigest(hashing: $0) } }
        for d in inserted { filter.insert(d) }
        #expect(inserted.allSatisfy { filter.mayContain($0) }, "no false negatives: a live chunk is never dropped")
        let others = (10_000..<20_000).map { i in withUnsafeBytes(of: i) { ChunkDigest(hashing: $0) } }
        let falsePositives = others.filter { filter.mayContain($0) }.count
        #expect(falsePositives < 300, "about 1% expected, got \(falsePositives) of 10000")
        #expect(filter.byteCount <= 13_000)
    }
}
