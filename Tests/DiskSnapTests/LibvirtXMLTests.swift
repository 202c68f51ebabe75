import Testing
import DiskSnapQemu
import DiskSnapSys

/// libvirt's XML as libvirt 9.0 formats it (from `virsh dumpxml` of the test domain), the
/// documents we send, and the checkpoint plan.
@Suite struct LibvirtXMLTests {
    static let domainXML = """
    <domain type='qemu' id='3'>
      <name>vm1</name>
      <devices>
        <emulator>/usr/bin/qemu-system-x86_64</emulator>
        <disk type='file' device='disk'>
          <driver name='qemu' type='qcow2'/>
          <source file='/var/lib/libvirt/images/vm1 &amp; co.qcow2' index='2'/>
          <backingStore type='file' index='3'>
            <format type='qcow2'/>
            <source file='/var/lib/libvirt/images/base.qcow2'/>
            <backingStore/>
          </backingStore>
          <target dev='vda' bus='virtio'/>
          <!-- a comment <disk> inside -->
          <alias name='virtio-disk0'/>
        </disk>
        <disk type="block" device="disk">
          <driver name="qemu" type="raw"/>
          <source dev="/dev/vg/data"/>
          <target dev="vdb" bus="virtio"/>
        </disk>
        <disk type='file' device='cdrom'>
          <target dev='sda' bus='sata'/>
          <readonly/>
        </disk>
      </devices>
    </domain>
    """

    @Test func disksAreReadWithTheirOwnSourceNotTheBackingOne() throws {
        let disks = try #require(LibvirtDisk.parse(domainXML: Self.domainXML))
        #expect(disks.map(\.target) == ["vda", "vdb", "sda"])
        #expect(disks[0].sourcePath == "/var/lib/libvirt/images/vm1 & co.qcow2")
        #expect(disks[0].format == "qcow2" && disks[0].type == "file" && !disks[0].readOnly)
        #expect(disks[1].sourcePath == "/dev/vg/data" && disks[1].format == "raw" && disks[1].type == "block")
        #expect(disks[2].device == "cdrom" && disks[2].readOnly && disks[2].sourcePath == nil)
    }

    @Test func theDiskIsChosenByTargetByImageOrAsTheOnlyOne() throws {
        let disks = try #require(LibvirtDisk.parse(domainXML: Self.domainXML))
        #expect(try LibvirtDisk.choose(disks: disks, target: "vdb", domain: "vm1", isImage: nil).target == "vdb")
        #expect(throws: QemuError.self) { try LibvirtDisk.choose(disks: disks, target: "vdz", domain: "vm1", isImage: nil) }
        #expect(try LibvirtDisk.choose(disks: disks, target: nil, domain: "vm1", isImage: { $0 == "/dev/vg/data" }).target == "vdb")
        #expect(throws: QemuError.self) { try LibvirtDisk.choose(disks: disks, target: nil, domain: "vm1", isImage: { _ in false }) }
        // Two writable disks and nothing to choose by: ambiguous, not a guess.
        do {
            _ = try LibvirtDisk.choose(disks: disks, target: nil, domain: "vm1", isImage: nil)
            Issue.record("chose a disk among two")
        } catch let error as QemuError {
            #expect(error.code == "Qemu.NodeAmbiguous")
        }
        let one = Array(disks.prefix(1)) + [disks[2]]
        #expect(try LibvirtDisk.choose(disks: one, target: nil, domain: "vm1", isImage: nil).target == "vda")
    }

    @Test func malformedDocumentsAreNotTrusted() {
        #expect(LibvirtDisk.parse(domainXML: "<domain><devices><disk>") == nil)
        #expect(LibvirtDisk.parse(domainXML: "<domain><devices></disk></devices></domain>") == nil)
        #expect(LibvirtDisk.parse(domainXML: "<domainbackup/>") == nil)
        #expect(LibvirtDisk.parse(domainXML: "<domain a=unquoted/>") == nil)
        #expect(LibvirtDisk.parse(domainXML: "") == nil)
    }

    @Test func theBackupCoversOneDiskAndOffersTheBitmapOnlyWhenIncremental() throws {
        let full = LibvirtDocuments.backup(target: "vda", others: ["vdb", "sda"], socketPath: "/run/disksnap/x/nbd.sock",
                                           exportName: "disksnap-s-1", scratchFile: "/r/tmp/s'1.qcow2", incrementalFrom: nil, exportBitmap: "b")
        let root = try #require(XMLTree.parse(full))
        #expect(root.name == "domainbackup" && root.attributes["mode"] == "pull" && root.child("incremental") == nil)
        let disks = try #require(root.child("disks")).all("disk")
        #expect(disks.map { $0.attributes["name"] ?? "" } == ["vda", "vdb", "sda"])
        #expect(disks.map { $0.attributes["backup"] ?? "" } == ["yes", "no", "no"])
        #expect(disks[0].attributes["exportbitmap"] == nil)
        #expect(disks[0].child("scratch")?.attributes["file"] == "/r/tmp/s'1.qcow2")
        #expect(LibvirtDocuments.backupSocket(full) == "/run/disksnap/x/nbd.sock")
        let incremental = LibvirtDocuments.backup(target: "vda", others: [], socketPath: "/s", exportName: "e", scratchFile: "/f",
                                                  incrementalFrom: "disksnap-r-s-0", exportBitmap: "disksnap-changed")
        let parsed = try #require(XMLTree.parse(incremental))
        #expect(parsed.child("incremental")?.text == "disksnap-r-s-0")
        #expect(parsed.child("disks")?.child("disk")?.attributes["exportbitmap"] == "disksnap-changed")
    }

    @Test func checkpointsKeepABitmapOfTheirDiskAlone() {
        let xml = LibvirtDocuments.checkpoint(name: "disksnap-r-s-1", description: "<ours>", target: "vda", others: ["vdb"])
        #expect(LibvirtDocuments.checkpointDisks(xml) == ["vda"])
        #expect(XMLTree.parse(xml)?.child("description")?.text == "<ours>")
        #expect(LibvirtDocuments.backupSocket("<domainbackup mode='push'><disks/></domainbackup>") == nil)
    }

    @Test func aCheckpointIsABaseOnlyIfLibvirtHasItForThisDisk() {
        let base = TrackingBase(snapshotID: "s-1", bitmap: "disksnap-r-s-1", granularity: nil, diskSize: 1 << 30)
        #expect(LibvirtTracking.plan(base: base, checkpointDisks: ["vda"], target: "vda") == .incremental(bitmap: "disksnap-r-s-1"))
        for (b, disks) in [(nil, ["vda"]), (base, nil), (base, ["vdb"]),
                           (TrackingBase(snapshotID: "s-1", bitmap: nil, granularity: nil, diskSize: 1), ["vda"])] as [(TrackingBase?, [String]?)] {
            guard case .full = LibvirtTracking.plan(base: b, checkpointDisks: disks, target: "vda") else {
                Issue.record("incremental without a usable checkpoint: \(String(describing: b)) \(String(describing: disks))")
                continue
            }
        }
    }

    @Test func domainArgumentsAreNameAndTarget() throws {
        let both = try LibvirtTarget(uri: "qemu:///system", parsing: "vm1:vda")
        #expect(both.domain == "vm1" && both.target == "vda")
        #expect(try LibvirtTarget(uri: "u", parsing: "vm1").target == nil)
        for bad in ["", ":vda", "vm1:"] {
            #expect(throws: QemuError.self) { try LibvirtTarget(uri: "u", parsing: bad) }
        }
    }
}
