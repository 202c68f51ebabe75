import Testing
import DiskSnapSys
@testable import DiskSnapQemu
@testable import DiskSnapEngine

@Suite struct ChangeTrackingPolicyTests {
    let repo = "4f97e9d3-6470-4eed-92ac-9fb9f6929124"
    var base: TrackingBase {
        TrackingBase(snapshotID: "s-aaaaaaaaaaaaaaaaaaaa", bitmap: ChangeTracking.bitmapName(repositoryID: repo, snapshotID: "s-aaaaaaaaaaaaaaaaaaaa"),
                     granularity: 32768, diskSize: 1 << 30)
    }

    func plan(_ bitmaps: [QemuBitmap], base: TrackingBase?, size: UInt64 = 1 << 30) -> TrackingPlan {
        ChangeTracking.plan(base: base, bitmaps: bitmaps, diskSize: size, chunkSize: 32768)
    }

    func reason(_ plan: TrackingPlan) -> String? {
        if case .full(let reason) = plan { return reason }
        return nil
    }

    @Test func theBaseBitmapRecordingWithItsGranularityMakesAnIncremental() {
        #expect(plan([QemuBitmap(name: base.bitmap!, granularity: 32768)], base: base) == .incremental(bitmap: base.bitmap!))
        // A raw image's bitmap is not persistent: as good while it exists.
        #expect(plan([QemuBitmap(name: base.bitmap!, granularity: 32768, persistent: false)], base: base) == .incremental(bitmap: base.bitmap!))
    }

    @Test func everyDoubtMeansAFullReadWithItsReason() {
        let name = base.bitmap!
        #expect(reason(plan([], base: nil))!.contains("no earlier"))
        var untracked = base
        untracked.bitmap = nil
        #expect(reason(plan([QemuBitmap(name: name, granularity: 32768)], base: untracked))!.contains("not taken with QEMU change tracking"))
        #expect(reason(plan([], base: base))!.contains("not in the image"))
        #expect(reason(plan([QemuBitmap(name: name + "x", granularity: 32768)], base: base))!.contains("not in the image"))
        #expect(reason(plan([QemuBitmap(name: name, granularity: 32768, inconsistent: true)], base: base))!.contains("inconsistent"))
        #expect(reason(plan([QemuBitmap(name: name, granularity: 32768, recording: false)], base: base))!.contains("not recording"))
        #expect(reason(plan([QemuBitmap(name: name, granularity: 32768, busy: true)], base: base))!.contains("in use"))
        #expect(reason(plan([QemuBitmap(name: name, granularity: 65536)], base: base))!.contains("granularity 65536"))
        #expect(reason(plan([QemuBitmap(name: name, granularity: 32768)], base: base, size: 2 << 30))!.contains("size changed"))
    }

    @Test func staleBitmapsAreOursOnlyAndNeverTheOneKept() {
        let keep = base.bitmap!
        let bitmaps = [keep, ChangeTracking.bitmapName(repositoryID: repo, snapshotID: "s-bbbbbbbbbbbbbbbbbbbb"),
                       ChangeTracking.temporaryBitmapName(snapshotID: "s-cccccccccccccccccccc"),
                       ChangeTracking.bitmapName(repositoryID: "another-repository", snapshotID: "s-dddddddddddddddddddd"),
                       "libvirt-checkpoint-1"].map { QemuBitmap(name: $0, granularity: 65536) }
        #expect(ChangeTracking.stale(bitmaps: bitmaps, repositoryID: repo, keep: keep)
                == [bitmaps[1].name, bitmaps[2].name])
        #expect(ChangeTracking.stale(bitmaps: bitmaps, repositoryID: repo, keep: nil).count == 3)
    }

    @Test func dirtyExtentsBecomeWholeChunks() {
        // What the incremental reads of the dirty extents: WorkPlan's merged chunk runs.
        let extents: [(UInt64, UInt64)] = [(0, 1), (32767, 2), (100_000, 0), (131072, 32768), (163840, 10)]
        let runs = WorkPlan.runs(dataRanges: extents.map { ByteRange(start: $0.0, end: $0.0 + $0.1) }, chunkSize: 32768, maxChunks: 1 << 20)
        #expect(runs.map { [$0.first, $0.end] } == [[0, 2], [4, 6]])
    }
}

@Suite struct NodeChoiceTests {
    func node(_ name: String, _ driver: String, _ file: String) -> QemuNode {
        QemuNode(name: name, driver: driver, filename: file, readOnly: false, virtualSize: 1 << 30, bitmaps: [])
    }

    @Test func theFormatNodeOverTheImageIsChosen() throws {
        let nodes = [node("disk0", "qcow2", "vm.qcow2"), node("file0", "file", "vm.qcow2"), node("#block1", "copy-before-write", "vm.qcow2"),
                     node("disksnap-o-x", "qcow2", "/tmp/overlay"), node("other", "qcow2", "other.qcow2")]
        #expect(try NodeChoice.choose(nodes: nodes, named: nil, imagePath: "/vm.qcow2") { $0 == "vm.qcow2" }.name == "disk0")
        // A raw image opened with the file driver only: the protocol node is the disk.
        #expect(try NodeChoice.choose(nodes: [nodes[1]], named: nil, imagePath: "/vm.qcow2") { $0 == "vm.qcow2" }.name == "file0")
    }

    @Test func noneTwoOrAWrongNamedNodeIsAnError() throws {
        let nodes = [node("disk0", "qcow2", "vm.qcow2"), node("disk1", "raw", "vm.qcow2"), node("other", "qcow2", "other.qcow2")]
        #expect(throws: QemuError.self) { try NodeChoice.choose(nodes: nodes, named: nil, imagePath: "/x") { $0 == "x.qcow2" } }
        do {
            _ = try NodeChoice.choose(nodes: nodes, named: nil, imagePath: "/vm.qcow2") { $0 == "vm.qcow2" }
            Issue.record("two format nodes on one image must be ambiguous")
        } catch {
            #expect(error.code == "Qemu.NodeAmbiguous")
        }
        do {
            _ = try NodeChoice.choose(nodes: nodes, named: "other", imagePath: "/vm.qcow2") { $0 == "vm.qcow2" }
            Issue.record("a named node with another file must be refused")
        } catch {
            #expect(error.code == "Qemu.NodeNotFound")
        }
        #expect(try NodeChoice.choose(nodes: nodes, named: "disk1", imagePath: "/vm.qcow2") { $0 == "vm.qcow2" }.name == "disk1")
    }

    @Test func queryNamedBlockNodesParses() {
        let reply: [[String: Any]] = [["node-name": "disk0", "drv": "qcow2", "file": "vm.qcow2", "ro": false,
                                       "image": ["virtual-size": 68_719_476_736 as Int64],
                                       "dirty-bitmaps": [["name": "b", "granularity": 32768, "recording": true, "persistent": true, "busy": false],
                                                         ["granularity": 65536, "recording": true]]]]
        let nodes = QemuNode.parse(reply)
        #expect(nodes.count == 1)
        #expect(nodes[0].virtualSize == 68_719_476_736)
        #expect(nodes[0].bitmaps == [QemuBitmap(name: "b", granularity: 32768)])
    }
}
