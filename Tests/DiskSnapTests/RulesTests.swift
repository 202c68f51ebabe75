import Testing
@testable import DiskSnapCatalog
@testable import DiskSnapEngine
@testable import DiskSnapSys

@Suite struct NameTests {
    @Test(arguments: ["ab", "daily-1", "db:backup_2", "数据盘快照", String(repeating: "a", count: 128)])
    func validNames(name: String) throws {
        #expect(try SnapshotName(name).rawValue == name)
    }

    @Test(arguments: ["a", "1abc", "_x", "auto-daily", "autox", "http://x", "https://x", "has space", "semi;colon",
                      String(repeating: "a", count: 129), ""])
    func malformedNames(name: String) {
        #expect(throws: CatalogError.self) { try SnapshotName(name) }
        do { _ = try SnapshotName(name) } catch { #expect(error.code == "InvalidSnapshotName.Malformed") }
    }

    @Test func descriptions() throws {
        #expect(try SnapshotDescription("").rawValue == "")
        #expect(try SnapshotDescription("nightly").rawValue == "nightly")
        for bad in ["x", "http://a", String(repeating: "d", count: 257)] {
            #expect(throws: CatalogError.self) { try SnapshotDescription(bad) }
        }
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
