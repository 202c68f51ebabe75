import Foundation
import DiskSnapSys
import DiskSnapQcow2

/// What a point-in-time view of a running QEMU's disk is asked for.
public struct ViewRequest: Sendable {
    public var qmpSocket: String
    public var imagePath: String
    /// The block node; nil: the node that has `imagePath` open.
    public var node: String?
    public var snapshotID: String
    public var repositoryID: String
    /// The bitmap granularity: the repository's chunk size.
    public var chunkSize: UInt64
    /// What the disk's previous snapshot left (nil: none).
    public var base: TrackingBase?
    /// Where the temporary overlay file goes; QEMU must be able to create it.
    public var scratchDirectory: String
    /// Locks and the NBD socket: one directory per host.
    public var runDirectory: String
    /// The Unix socket of an NBD server this QEMU already runs (a QEMU runs one at most).
    public var nbdSocket: String?
    /// Freezes the guest's filesystems around the instant the view is made (`--freeze`).
    public var freezer: GuestFreezer?

    public init(qmpSocket: String, imagePath: String, snapshotID: String, repositoryID: String, chunkSize: UInt64, scratchDirectory: String) {
        self.qmpSocket = qmpSocket
        self.imagePath = imagePath
        self.snapshotID = snapshotID
        self.repositoryID = repositoryID
        self.chunkSize = chunkSize
        self.scratchDirectory = scratchDirectory
        self.runDirectory = FileSystem.environment("DISKSNAP_RUN_DIR") ?? "/run/disksnap"
    }
}

/// A point-in-time view of a disk that a running QEMU writes (docs/DESIGN.md, "Running
/// VMs"), made as libvirt makes its pull-mode backups: a temporary qcow2 overlay backed by
/// the live node, and in one QMP `transaction` the bitmap the next snapshot will read, the
/// frozen copy of the previous one, and `blockdev-backup sync=none` into the overlay, whose
/// copy-before-write keeps every cluster the guest overwrites afterwards as it was. The
/// overlay is exported read-only over NBD on a private Unix socket.
///
/// Every object it makes in QEMU is named `disksnap-...`; one view per QEMU at a time (a
/// lock in the run directory), so whatever such objects a new view finds were left by a run
/// that was killed, and are removed first.
public final class PointInTimeView {
    /// QEMU 5.2 brought `block-export-add`; the rest is older.
    public static let neededCommands = [
        "transaction", "blockdev-add", "blockdev-del", "blockdev-backup", "block-job-cancel",
        "query-jobs", "job-dismiss", "block-dirty-bitmap-add", "block-dirty-bitmap-remove", "block-dirty-bitmap-merge",
        "nbd-server-start", "nbd-server-stop", "block-export-add", "block-export-del", "query-block-exports",
        "query-named-block-nodes", "query-block-jobs",
    ]
    public static let minimumVersion = QMPClient.Version(5, 2, 0)

    public let qmp: QMPClient
    public let node: QemuNode
    /// Where to read the view: an NBD export on a Unix socket.
    public let socketPath: String
    public let exportName: String
    /// `qemu-fleecing`, or `qemu-read-only` when QEMU has the image open read-only (then the
    /// node itself is exported: nothing writes it).
    public let method: String
    public let plan: TrackingPlan
    /// The NBD meta context with the extents changed since the base (incremental plans).
    public let dirtyContext: String?
    /// The persistent bitmap this view began, for the next snapshot (nil when read-only).
    public let newBitmap: String?
    public let granularity: UInt64
    /// What the freeze around the view's instant did (nil: the guest was not frozen).
    public private(set) var frozen: FreezeOutcome?
    /// Objects of killed runs this view removed first ("node disksnap-o-...", "bitmap ...").
    public private(set) var removedStale: [String] = []

    private let request: ViewRequest
    private let lock: FileLock
    private let tag: String
    private let temporaryBitmap: String?
    private let scratchPath: String
    private var startedServer = false
    private let markerPath: String
    private var closed = false

    private var fileNode: String { "disksnap-f-\(tag)" }
    private var overlayNode: String { "disksnap-o-\(tag)" }
    private var backupJob: String { "disksnap-b-\(tag)" }
    private var exportID: String { "disksnap-e-\(tag)" }

    /// Connects, removes what killed runs left, and makes the view. Throws with nothing of
    /// this run left in QEMU.
    public static func make(_ request: ViewRequest) throws -> PointInTimeView {
        let qmp = try QMPClient(socketPath: request.qmpSocket)
        let commands = try qmp.commands()
        let missing = neededCommands.filter { !commands.contains($0) }
        guard missing.isEmpty, qmp.version >= minimumVersion else {
            throw QemuError.unsupported("QEMU \(qmp.version) at \(request.qmpSocket) cannot make a point-in-time view\(missing.isEmpty ? "" : " (it lacks \(missing.joined(separator: ", ")))"): QEMU \(minimumVersion.major).\(minimumVersion.minor) or later is needed")
        }
        try FileSystem.makeDirectories(request.runDirectory)
        let key = qemuKey(qmp)
        guard let lock = try FileLock.tryAcquire(path: "\(request.runDirectory)/\(key).lock", kind: .exclusive) else {
            throw QemuError.busy("Qemu.Busy", "another disksnap is making a point-in-time view on the QEMU at \(request.qmpSocket); try again when it ends")
        }
        let view = try PointInTimeView(request: request, qmp: qmp, lock: lock, key: key)
        return view
    }

    private init(request: ViewRequest, qmp: QMPClient, lock: FileLock, key: String) throws {
        self.request = request
        self.qmp = qmp
        self.lock = lock
        self.markerPath = "\(request.runDirectory)/\(key).nbd-server"
        // Node names are at most 31 characters: the snapshot id's random part.
        tag = String(request.snapshotID.dropFirst(2))
        granularity = request.chunkSize
        var removed: [String] = []
        try Self.removeStale(qmp: qmp, markerPath: markerPath, removed: &removed)

        let image = try FileSystem.status(request.imagePath)
        let cwd = qmp.peerProcessID.map { "/proc/\($0)/cwd" }
        let nodes = QemuNode.parse(try qmp.execute("query-named-block-nodes", ["flat": true]))
        node = try NodeChoice.choose(nodes: nodes, named: request.node, imagePath: request.imagePath) { filename in
            let path = filename.hasPrefix("/") || cwd == nil ? filename : "\(cwd!)/\(filename)"
            guard let status = try? FileSystem.statusIfExists(path) else { return false }
            return status.device == image.device && status.inode == image.inode
        }
        guard let size = node.virtualSize, size > 0 else {
            throw QemuError.nodeNotFound("block node \(node.name) reports no virtual size")
        }
        exportName = "disksnap-\(request.snapshotID)"
        scratchPath = "\(request.scratchDirectory)/disksnap-fleece-\(request.snapshotID).qcow2"
        socketPath = request.nbdSocket ?? "\(request.runDirectory)/\(key).nbd.sock"

        if node.readOnly {
            method = "qemu-read-only"
            plan = .full(reason: "QEMU has the image open read-only: nothing writes it through QEMU, and no bitmap can be stored in it")
            dirtyContext = nil
            newBitmap = nil
            temporaryBitmap = nil
            removedStale = removed
            do {
                try startExport(of: node.name, bitmap: nil)
            } catch {
                try? close()
                throw error
            }
            return
        }
        method = "qemu-fleecing"
        let plan = ChangeTracking.plan(base: request.base, bitmaps: node.bitmaps, diskSize: size, chunkSize: request.chunkSize)
        self.plan = plan
        var keep: String?
        if case .incremental(let bitmap) = plan { keep = bitmap }
        for name in ChangeTracking.stale(bitmaps: node.bitmaps, repositoryID: request.repositoryID, keep: keep) {
            try qmp.execute("block-dirty-bitmap-remove", ["node": node.name, "name": name])
            removed.append("bitmap \(name)")
        }
        removedStale = removed
        newBitmap = ChangeTracking.bitmapName(repositoryID: request.repositoryID, snapshotID: request.snapshotID)
        temporaryBitmap = keep == nil ? nil : ChangeTracking.temporaryBitmapName(snapshotID: request.snapshotID)
        dirtyContext = temporaryBitmap.map { "qemu:dirty-bitmap:\($0)" }

        do {
            try makeOverlay(size: size)
            TestHooks.pause(at: "qemu-before-view")
            var actions: [QMPObject] = []
            if let keep, let temporaryBitmap {
                // The bits of the previous bitmap at this instant, frozen: what changed
                // between the previous snapshot and this one, exactly.
                actions.append(["type": "block-dirty-bitmap-add", "data": ["node": node.name, "name": temporaryBitmap, "granularity": granularity, "persistent": false, "disabled": true] as QMPObject])
                actions.append(["type": "block-dirty-bitmap-merge", "data": ["node": node.name, "target": temporaryBitmap, "bitmaps": [keep]] as QMPObject])
            }
            // Only qcow2 stores bitmaps; on another format the bitmap lives as long as QEMU.
            actions.append(["type": "block-dirty-bitmap-add", "data": ["node": node.name, "name": newBitmap!, "granularity": granularity, "persistent": node.driver == "qcow2"] as QMPObject])
            actions.append(["type": "blockdev-backup", "data": ["job-id": backupJob, "device": node.name, "target": overlayNode, "sync": "none"] as QMPObject])
            if let freezer = request.freezer {
                frozen = try freezer.whileFrozen { try qmp.execute("transaction", ["actions": actions]) }
            } else {
                try qmp.execute("transaction", ["actions": actions])
            }
            TestHooks.pause(at: "qemu-after-view")
            try startExport(of: overlayNode, bitmap: temporaryBitmap)
        } catch {
            try? close()
            abandon()
            throw error
        }
    }

    /// Creates the scratch file, formats it as an empty qcow2 of the disk's size (the layout
    /// a restore writes: 64 KiB clusters, no data), and opens it in one `blockdev-add`, the
    /// live node as its backing. QEMU's own `blockdev-create` would be a job to start, wait
    /// for and dismiss: four round trips and an event, a tenth of a tracked incremental.
    private func makeOverlay(size: UInt64) throws {
        try? FileSystem.removeIfExists(scratchPath)
        do {
            let file = try OpenFile(path: scratchPath, mode: [.readWrite, .create, .exclusive])
            try Qcow2Layout(virtualSize: size, allocated: []).writeMetadata(to: file)
        } catch {
            try? FileSystem.removeIfExists(scratchPath)
            throw error
        }
        try qmp.execute("blockdev-add", [
            "driver": "qcow2", "node-name": overlayNode, "backing": node.name,
            "file": ["driver": "file", "node-name": fileNode, "filename": scratchPath] as QMPObject,
        ])
    }

    private func startExport(of exportedNode: String, bitmap: String?) throws {
        if request.nbdSocket == nil {
            try? FileSystem.removeIfExists(socketPath)
            do {
                try qmp.execute("nbd-server-start", ["addr": ["type": "unix", "data": ["path": socketPath]] as QMPObject])
            } catch {
                guard error.message.contains("already running") else { throw error }
                throw QemuError.busy("Qemu.NbdServerInUse", "QEMU at \(request.qmpSocket) already runs an NBD server (a QEMU runs one at most): pass --nbd-socket with the Unix socket it listens on")
            }
            startedServer = true
            try FileSystem.writeAtomically(Array(socketPath.utf8), to: markerPath, temporaryDirectory: request.runDirectory)
        }
        var export: QMPObject = ["type": "nbd", "id": exportID, "node-name": exportedNode, "name": exportName, "writable": false]
        if let bitmap { export["bitmaps"] = [bitmap] }
        try qmp.execute("block-export-add", export)
    }

    /// Ends the view: the export, the NBD server it started, the backup job, the overlay
    /// nodes and file. The bitmaps stay for `commit` or `abandon`. Call it after the last
    /// NBD connection is closed.
    public func close() throws {
        guard !closed else { return }
        closed = true
        var errors: [any Error] = []
        do { try Self.deleteExport(qmp: qmp, id: exportID) } catch { errors.append(error) }
        if startedServer {
            do { try qmp.execute("nbd-server-stop") } catch { errors.append(error) }
            try? FileSystem.removeIfExists(markerPath)
            try? FileSystem.removeIfExists(socketPath)
        }
        do { try Self.cancelJob(qmp: qmp, id: backupJob) } catch { errors.append(error) }
        do { try Self.deleteNode(qmp: qmp, name: overlayNode) } catch { errors.append(error) }
        do { try Self.deleteNode(qmp: qmp, name: fileNode) } catch { errors.append(error) }
        try? FileSystem.removeIfExists(scratchPath)
        if let first = errors.first { throw first }
    }

    /// The snapshot is committed: the previous snapshot's bitmap and the frozen copy go; the
    /// new bitmap stays for the next snapshot.
    public func commit() throws {
        if case .incremental(let base) = plan { try removeBitmap(base) }
        if let temporaryBitmap { try removeBitmap(temporaryBitmap) }
    }

    /// The snapshot failed: the new bitmap and the frozen copy go, the previous snapshot's
    /// bitmap stays (the next run reads what changed since it).
    public func abandon() {
        if let newBitmap { try? removeBitmap(newBitmap) }
        if let temporaryBitmap { try? removeBitmap(temporaryBitmap) }
    }

    private func removeBitmap(_ name: String) throws {
        do {
            try qmp.execute("block-dirty-bitmap-remove", ["node": node.name, "name": name])
        } catch {
            // Already gone is done.
            guard error.message.contains("not found") || error.message.contains("Dirty bitmap") else { throw error }
        }
    }

    /// The same QEMU whatever monitor socket reaches it: its process id and start time.
    private static func qemuKey(_ qmp: QMPClient) -> String {
        if let pid = qmp.peerProcessID, let stat = try? FileSystem.readFile("/proc/\(pid)/stat") {
            let text = String(decoding: stat, as: UTF8.self)
            // Fields after the command name (which may hold spaces) start after the last ')'.
            if let close = text.lastIndex(of: ")") {
                let fields = text[text.index(after: close)...].split(separator: " ")
                if fields.count > 19 { return "qemu-\(pid)-\(fields[19])" }
            }
        }
        let digest = Array(qmp.socketPath.utf8).reduce(UInt64(14695981039346656037)) { ($0 ^ UInt64($1)) &* 1099511628211 }
        return "qemu-socket-\(String(digest, radix: 16))"
    }

    /// What killed runs left on this QEMU: exports, the NBD server (when the marker says a
    /// run of ours started it on this same QEMU), jobs, then nodes (overlays before the file
    /// nodes under them). Bitmaps are the node's business: see `ChangeTracking.stale`.
    private static func removeStale(qmp: QMPClient, markerPath: String, removed: inout [String]) throws {
        let exports = try qmp.execute("query-block-exports") as? [QMPObject] ?? []
        for export in exports {
            guard let id = export["id"] as? String, id.hasPrefix(NodeChoice.ownPrefix) else { continue }
            try deleteExport(qmp: qmp, id: id)
            removed.append("export \(id)")
        }
        if FileSystem.exists(markerPath) {
            // The marker names this QEMU (its process id and start time are in the path):
            // the server running there is the one a killed run of ours started.
            // Unless someone has added an NBD export of their own to it since.
            let otherExports = exports.filter { $0["type"] as? String == "nbd" && !($0["id"] as? String ?? "").hasPrefix(NodeChoice.ownPrefix) }
            if otherExports.isEmpty {
                do {
                    try qmp.execute("nbd-server-stop")
                    removed.append("NBD server")
                } catch {}
                try? FileSystem.removeIfExists(markerPath)
            }
        }
        let jobs = try qmp.execute("query-block-jobs") as? [QMPObject] ?? []
        for job in jobs {
            guard let id = job["device"] as? String, id.hasPrefix(NodeChoice.ownPrefix) else { continue }
            try cancelJob(qmp: qmp, id: id)
            removed.append("job \(id)")
        }
        for job in try qmp.execute("query-jobs") as? [QMPObject] ?? [] {
            guard let id = job["id"] as? String, id.hasPrefix(NodeChoice.ownPrefix), job["status"] as? String == "concluded" else { continue }
            _ = try? qmp.execute("job-dismiss", ["id": id])
        }
        let nodes = QemuNode.parse(try qmp.execute("query-named-block-nodes", ["flat": true]))
        for prefix in ["disksnap-o-", "disksnap-f-"] {
            for node in nodes where node.name.hasPrefix(prefix) {
                try deleteNode(qmp: qmp, name: node.name)
                removed.append("node \(node.name)")
            }
        }
    }

    private static func deleteExport(qmp: QMPClient, id: String) throws {
        let exports = try qmp.execute("query-block-exports") as? [QMPObject] ?? []
        guard exports.contains(where: { $0["id"] as? String == id }) else { return }
        try qmp.execute("block-export-del", ["id": id, "mode": "hard"])
        _ = try qmp.waitForEvent("BLOCK_EXPORT_DELETED", timeout: 30) { $0["id"] as? String == id }
    }

    private static func cancelJob(qmp: QMPClient, id: String) throws {
        func present() throws -> Bool {
            (try qmp.execute("query-block-jobs") as? [QMPObject] ?? []).contains { $0["device"] as? String == id }
        }
        guard try present() else { return }
        try qmp.execute("block-job-cancel", ["device": id, "force": true])
        let deadline = Date().addingTimeInterval(30)
        while try present() {
            guard Date() < deadline else { throw QemuError.gone("block job \(id) did not end within 30 s of its cancel") }
            usleep(5_000)
        }
    }

    private static func deleteNode(qmp: QMPClient, name: String) throws {
        let nodes = QemuNode.parse(try qmp.execute("query-named-block-nodes", ["flat": true]))
        guard nodes.contains(where: { $0.name == name }) else { return }
        try qmp.execute("blockdev-del", ["node-name": name])
    }
}
