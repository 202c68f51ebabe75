import ArgumentParser
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog
import DiskSnapEngine
import DiskSnapQemu

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Snapshot a disk: a registered disk's id or name, or a path (registered on first use).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Disk id, disk name, raw image file or block device (with --domain: optional, the domain's disk).")
    var source: String?
    @Option(help: "Snapshot name, under the repository profile's rules (docs/RULES.md).")
    var name: String
    @Option(help: "Description, under the profile's rules.")
    var description: String = ""
    @Option(name: .customLong("tag"), help: "KEY=VALUE (repeatable, at most 20).")
    var tags: [String] = []
    @Option(help: "Idempotency token (at most 64 ASCII characters): a retry with the same token and parameters returns the same SnapshotId.")
    var clientToken: String?
    @Flag(help: "Accept a source that changes while read, or a qcow2 image a VM has open (the snapshot is marked not crash-consistent).")
    var allowLive = false
    @Option(help: "raw (the file's bytes) or qcow2 (the guest disk); default: qcow2 when the file has a qcow2 header.")
    var format: String?
    @Flag(help: "Refuse a qcow2 image that has a backing file.")
    var noBacking = false
    @Flag(help: "Snapshot even when another disk now sits at the registered path.")
    var force = false
    @Option(help: ArgumentHelp("The QMP socket of a running QEMU (or qemu-storage-daemon) that has the image open: read a point-in-time view of it, and with change tracking only what changed since the disk's previous snapshot.", valueName: "socket"))
    var qmp: String?
    @Option(help: ArgumentHelp("With --qmp: the block node (default: the node that has the image open).", valueName: "name"))
    var node: String?
    @Option(help: ArgumentHelp("With --qmp: the Unix socket of an NBD server the QEMU already runs (default: disksnap starts one, on a private socket).", valueName: "path"))
    var nbdSocket: String?
    @Option(help: ArgumentHelp("A libvirt domain's disk (TARGET such as vda; default: the disk whose source is the image given, else the domain's only disk): read through libvirt's backup API while the domain runs, with a checkpoint so that the next snapshot reads only what changed; the image itself when the domain is shut off.", valueName: "name[:target]"))
    var domain: String?
    @Option(name: .customLong("connect"), help: ArgumentHelp("With --domain: the libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system).", valueName: "uri"))
    var libvirtURI: String?
    @Flag(help: "With --qmp or --domain: freeze the guest's filesystems through its agent (--guest-agent) around the instant the view is made, so the snapshot is application-consistent; always thawed, by a watchdog if disksnap dies.")
    var freeze = false
    @Option(help: ArgumentHelp("With --qmp --freeze: the host end of the guest agent's channel (-chardev socket,path=SOCKET,server=on,wait=off plus a virtserialport named org.qemu.guest_agent.0).", valueName: "socket"))
    var guestAgent: String?
    @Option(help: ArgumentHelp("With --freeze: the longest, in seconds, the guest may stay frozen (the flush included) before disksnap thaws it and fails; a watchdog thaws it 10 s later whatever disksnap does.", valueName: "seconds"))
    var freezeLimit: Double = 30
    @Flag(help: "Read the image itself, not a reflink clone of it (made by default where the filesystem supports FICLONE: XFS with reflink, btrfs).")
    var noClone = false
    @Flag(help: "Keep the reflink clone until the disk's next snapshot, which then reads only the ranges whose extents differ between the two clones (raw images; the clone holds the space of what the image overwrites meanwhile: show reports it).")
    var keepClone = false
    @Flag(help: "Print {\"SnapshotId\", \"RequestId\"} as JSON.")
    var json = false

    func run() throws {
        try runReporting(json: json) {
            guard source != nil || domain != nil else {
                throw CatalogError.invalid("InvalidParameter.Source", "name the disk to snapshot: a disk id or name, an image file or block device, or --domain NAME[:TARGET]")
            }
            var request = CreateRequest(source: source ?? "", name: name)
            request.description = description
            request.tags = try tags.map { try Tag(parsing: $0) }
            request.clientToken = try clientToken.map { try ClientToken($0) }
            request.allowLive = allowLive
            request.force = force
            if let format {
                guard let parsed = SourceFormat(rawValue: format) else {
                    throw CatalogError.invalid("InvalidParameter.Format", "format '\(format)' is not raw or qcow2")
                }
                request.format = parsed
            }
            request.allowBacking = !noBacking
            request.clone = !noClone
            guard !(keepClone && noClone) else {
                throw CatalogError.invalid("InvalidParameter.Clone", "--keep-clone keeps the reflink clone that --no-clone turns off")
            }
            request.keepClone = keepClone
            if let domain {
                guard qmp == nil, node == nil, nbdSocket == nil, guestAgent == nil else {
                    throw CatalogError.invalid("InvalidParameter.Domain", "--domain goes through libvirt, which owns the domain's QEMU and talks to its guest agent: --qmp, --node, --nbd-socket and --guest-agent do not apply")
                }
                guard !allowLive, format == nil else {
                    throw CatalogError.invalid("InvalidParameter.Domain", "--domain reads the disk as the guest sees it, at one instant: --allow-live and --format do not apply")
                }
                var target = try LibvirtTarget(uri: libvirtURI ?? LibvirtTarget.defaultURI, parsing: domain)
                if freeze {
                    guard freezeLimit >= 1, freezeLimit <= 600 else {
                        throw CatalogError.invalid("InvalidParameter.Freeze", "--freeze-limit \(freezeLimit) is not between 1 and 600 seconds")
                    }
                    target.freeze = true
                    target.freezeLimit = freezeLimit
                }
                request.libvirt = target
            } else if libvirtURI != nil {
                throw CatalogError.invalid("InvalidParameter.Domain", "--connect names libvirt's URI for --domain")
            } else if let qmp {
                guard !allowLive, format == nil else {
                    throw CatalogError.invalid("InvalidParameter.Qmp", "--qmp reads QEMU's point-in-time view of the disk as QEMU's node sees it: --allow-live and --format do not apply")
                }
                var target = QemuTarget(qmpSocket: qmp, node: node, nbdSocket: nbdSocket)
                if freeze {
                    guard let guestAgent else {
                        throw CatalogError.invalid("InvalidParameter.Freeze", "--freeze needs --guest-agent SOCKET: the host end of the guest agent's virtio-serial channel")
                    }
                    guard freezeLimit >= 1, freezeLimit <= 600 else {
                        throw CatalogError.invalid("InvalidParameter.Freeze", "--freeze-limit \(freezeLimit) is not between 1 and 600 seconds")
                    }
                    target.guestAgent = guestAgent
                    target.freezeLimit = freezeLimit
                } else if guestAgent != nil {
                    throw CatalogError.invalid("InvalidParameter.Freeze", "--guest-agent is used only with --freeze")
                }
                request.qemu = target
            } else if node != nil || nbdSocket != nil {
                throw CatalogError.invalid("InvalidParameter.Qmp", "--node and --nbd-socket need --qmp")
            } else if freeze || guestAgent != nil {
                throw CatalogError.invalid("InvalidParameter.Freeze", "--freeze freezes a running VM's guest around QEMU's point-in-time view: it needs --qmp or --domain")
            }
            request.progress = TerminalProgress.ifTerminal
            let repository = try global.openOrInitializeRepository()
            let result = try Snapshotter(repository: repository).create(request)
            if let problem = result.compactionError { Output.warning("index compaction after the snapshot failed (the snapshot is complete): \(problem)") }
            for stale in result.removedStale { Output.warning("removed \(stale), left by a disksnap run that was killed") }
            if result.record.guestFrozen == true {
                Output.log("froze \(result.record.frozenFilesystems ?? 0) guest filesystem(s) for \(result.record.freezeMilliseconds ?? 0) ms")
            }
            for note in result.notes { Output.log(note) }
            for warning in result.warnings { Output.warning("\(warning) (the snapshot is complete)") }
            if json {
                Output.json(CreateResponse(snapshotId: result.record.snapshotId.rawValue, requestId: RandomUUID.generate()))
            } else {
                Output.line(result.record.snapshotId.rawValue)
            }
        }
    }
}

struct CreateResponse: Encodable {
    var snapshotId: String
    var requestId: String
}
