import DiskSnapSys

/// A disk of a libvirt domain, from its live XML.
public struct LibvirtDisk: Sendable, Equatable {
    /// `vda`, `sdb`: what `--domain NAME:TARGET` names.
    public var target: String
    /// `disk`, `cdrom`, `floppy`, `lun`.
    public var device: String
    /// `file`, `block`, `network`, `volume`.
    public var type: String
    /// The image file or block device the domain reads (nil for network disks).
    public var sourcePath: String?
    /// `qcow2`, `raw`, ...
    public var format: String?
    public var readOnly: Bool

    /// The disks of a domain's XML, in order.
    public static func parse(domainXML: String) -> [LibvirtDisk]? {
        guard let root = XMLTree.parse(domainXML), root.name == "domain" else { return nil }
        return (root.child("devices")?.all("disk") ?? []).compactMap { disk in
            guard let target = disk.child("target")?.attributes["dev"] else { return nil }
            let source = disk.child("source")
            return LibvirtDisk(target: target, device: disk.attributes["device"] ?? "disk", type: disk.attributes["type"] ?? "file",
                               sourcePath: source?.attributes["file"] ?? source?.attributes["dev"],
                               format: disk.child("driver")?.attributes["type"],
                               readOnly: disk.child("readonly") != nil)
        }
    }

    /// The disk `--domain NAME[:TARGET]` means: the target named; else the disk whose source
    /// is the image (`isImage`); else the domain's only writable disk.
    public static func choose(disks: [LibvirtDisk], target: String?, domain: String, isImage: ((String) -> Bool)?) throws -> LibvirtDisk {
        let candidates = disks.filter { $0.device == "disk" || $0.device == "lun" }
        let names = disks.map(\.target).joined(separator: ", ")
        if let target {
            guard let disk = disks.first(where: { $0.target == target }) else {
                throw QemuError.nodeNotFound("domain \(domain) has no disk \(target) (its disks: \(names.isEmpty ? "none" : names))")
            }
            return disk
        }
        if let isImage {
            let matching = candidates.filter { $0.sourcePath.map(isImage) ?? false }
            if matching.count == 1 { return matching[0] }
            if matching.count > 1 {
                throw QemuError.nodeAmbiguous("domain \(domain) has the image open as \(matching.map(\.target).joined(separator: " and ")): name one (--domain \(domain):TARGET)")
            }
            throw QemuError.nodeNotFound("domain \(domain) has no disk whose source is the image (its disks: \(disks.map { "\($0.target)=\($0.sourcePath ?? "-")" }.joined(separator: ", ")))")
        }
        let writable = candidates.filter { !$0.readOnly }
        guard writable.count == 1 else {
            throw QemuError.nodeAmbiguous("domain \(domain) has \(writable.count) writable disks (\(writable.map(\.target).joined(separator: ", "))): name one (--domain \(domain):TARGET)")
        }
        return writable[0]
    }
}

/// The documents disksnap sends libvirt, and what it reads back from a backup job.
public enum LibvirtDocuments {
    /// A pull-mode backup of `target` alone (every other disk `backup='no'`, else libvirt
    /// would export them all), over a Unix socket; incremental from `checkpoint` when given.
    /// The scratch file holds what the guest overwrites while the backup runs; libvirt
    /// creates it (labelled for its QEMU) and removes it when the job ends.
    public static func backup(target: String, others: [String], socketPath: String, exportName: String,
                              scratchFile: String, incrementalFrom checkpoint: String?, exportBitmap: String) -> String {
        var xml = "<domainbackup mode='pull'>\n"
        if let checkpoint { xml += "  <incremental>\(XMLTree.escape(checkpoint))</incremental>\n" }
        xml += "  <server transport='unix' socket='\(XMLTree.escape(socketPath))'/>\n  <disks>\n"
        let bitmap = checkpoint == nil ? "" : " exportbitmap='\(XMLTree.escape(exportBitmap))'"
        xml += "    <disk name='\(XMLTree.escape(target))' backup='yes' type='file' exportname='\(XMLTree.escape(exportName))'\(bitmap)>\n"
        xml += "      <scratch file='\(XMLTree.escape(scratchFile))'/>\n    </disk>\n"
        for other in others { xml += "    <disk name='\(XMLTree.escape(other))' backup='no'/>\n" }
        return xml + "  </disks>\n</domainbackup>\n"
    }

    /// A checkpoint of `target` alone, a bitmap in its qcow2 image from the backup's instant.
    public static func checkpoint(name: String, description: String, target: String, others: [String]) -> String {
        var xml = "<domaincheckpoint>\n  <name>\(XMLTree.escape(name))</name>\n"
        xml += "  <description>\(XMLTree.escape(description))</description>\n  <disks>\n"
        xml += "    <disk name='\(XMLTree.escape(target))' checkpoint='bitmap'/>\n"
        for other in others { xml += "    <disk name='\(XMLTree.escape(other))' checkpoint='no'/>\n" }
        return xml + "  </disks>\n</domaincheckpoint>\n"
    }

    /// The Unix socket a running backup job serves on (nil: not a pull job on a Unix socket).
    public static func backupSocket(_ xml: String) -> String? {
        guard let root = XMLTree.parse(xml), root.name == "domainbackup", let server = root.child("server"),
              server.attributes["transport"] == "unix" else { return nil }
        return server.attributes["socket"]
    }

    /// The disks a checkpoint keeps a bitmap of.
    public static func checkpointDisks(_ xml: String) -> [String]? {
        guard let root = XMLTree.parse(xml), root.name == "domaincheckpoint" else { return nil }
        return (root.child("disks")?.all("disk") ?? []).filter { $0.attributes["checkpoint"] == "bitmap" }.compactMap { $0.attributes["name"] }
    }
}
