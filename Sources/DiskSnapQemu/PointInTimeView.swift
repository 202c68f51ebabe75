import Foundation
import DiskSnapSys
import DiskSnapQcow2
import Synchronization

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
        self.runDirectory = Self.defaultRunDirectory
    }

    /// Locks and NBD sockets of views (`DISKSNAP_RUN_DIR` in tests).
    public static var defaultRunDirectory: String { FileSystem.environment("DISKSNAP_RUN_DIR") ?? "/run/disksnap" }
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
    public static func make(_ request: ViewRequest, connection: Connection? = nil) throws -> PointInTimeView {
        let qmp = try (connection ?? connect(qmpSocket: request.qmpSocket)).qmp
        let key = qemuKey(qmp)
        guard let lock = try viewLock(key, in: request.runDirectory) else {
            throw QemuError.busy("Qemu.Busy", "another disksnap is making a point-in-time view on the QEMU at \(request.qmpSocket); try again when it ends")
        }
        // What it holds, in one round trip, read under the lock: whatever of ours is there
        // was left by a killed run.
        let state = try qmp.executeAll([("query-block-exports", [:]), ("query-block-jobs", [:]), ("query-jobs", [:]),
                                        ("query-named-block-nodes", ["flat": true])])
        let found = BlockState(exports: try state[0].get() as? [QMPObject] ?? [], blockJobs: try state[1].get() as? [QMPObject] ?? [],
                               jobs: try state[2].get() as? [QMPObject] ?? [], nodes: try state[3].get())
        return try PointInTimeView(request: request, qmp: qmp, lock: lock, key: key, found: found)
    }

    /// A monitor connection to a QEMU able to make a view. Made by one thread and handed to
    /// the one that makes the view, which alone uses it from then on.
    public struct Connection: @unchecked Sendable {
        let qmp: QMPClient
    }

    /// Connects and checks that this QEMU can make a view (`query-commands`, its version);
    /// loads libnbd. Nothing in QEMU changes and no lock is taken: `create` does this while
    /// it admits the request, which may still fail or wait.
    public static func connect(qmpSocket: String) throws -> Connection {
        // The view is read over NBD: libnbd is loaded here, off the path that waits for it.
        try? NBDClient.load()
        let qmp = try QMPClient(socketPath: qmpSocket) { pid throws(QemuError) in
            // libvirt owns its domains' QEMUs: one is driven through libvirt (--domain),
            // never behind its back.
            if let domain = LibvirtView.domain(servingMonitor: FileSystem.absolutePath(qmpSocket), peer: pid) {
                throw QemuError.managedByLibvirt("the QEMU at \(qmpSocket) (process \(pid)) runs libvirt domain \(domain.isEmpty ? "(name unknown)" : domain): snapshot it through libvirt with --domain \(domain.isEmpty ? "NAME" : domain), never behind libvirt's back")
            }
        }
        let commands = try qmp.commands()
        let missing = neededCommands.filter { !commands.contains($0) }
        guard missing.isEmpty, qmp.version >= minimumVersion else {
            throw QemuError.unsupported("QEMU \(qmp.version) at \(qmpSocket) cannot make a point-in-time view\(missing.isEmpty ? "" : " (it lacks \(missing.joined(separator: ", ")))"): QEMU \(minimumVersion.major).\(minimumVersion.minor) or later is needed")
        }
        return Connection(qmp: qmp)
    }

    /// What QEMU held when the view began: exports, jobs and block nodes.
    struct BlockState {
        var exports: [QMPObject]
        var blockJobs: [QMPObject]
        var jobs: [QMPObject]
        /// `query-named-block-nodes` as QEMU answered it.
        var nodes: Any
    }

    private init(request: ViewRequest, qmp: QMPClient, lock: FileLock, key: String, found: BlockState) throws {
        self.request = request
        self.qmp = qmp
        self.lock = lock
        self.markerPath = "\(request.runDirectory)/\(key).nbd-server"
        // Node names are at most 31 characters: the snapshot id's random part.
        tag = String(request.snapshotID.dropFirst(2))
        granularity = request.chunkSize
        var removed: [String] = []
        var nodeList = found.nodes
        if try Self.removeStale(qmp: qmp, found: found, markerPath: markerPath, removed: &removed) {
            nodeList = try qmp.execute("query-named-block-nodes", ["flat": true])
        }

        let image = try FileSystem.status(request.imagePath)
        let cwd = qmp.peerProcessID.map { "/proc/\($0)/cwd" }
        let nodes = QemuNode.parse(nodeList)
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
                try startServer()
                try addExport(of: node.name, bitmap: nil)
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
            try writeScratch(size: size)
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
            let overlay: QMPObject = [
                "driver": "qcow2", "node-name": overlayNode, "backing": node.name,
                "file": ["driver": "file", "node-name": fileNode, "filename": scratchPath] as QMPObject,
            ]
            if let freezer = request.freezer {
                try qmp.execute("blockdev-add", overlay)
                frozen = try freezer.whileFrozen { try qmp.execute("transaction", ["actions": actions]) }
                TestHooks.pause(at: "qemu-after-view")
                try startServer()
            } else {
                // The overlay, the instant and the NBD server in one round trip. A command
                // whose predecessor failed fails too or does no harm; a server that started is
                // ours to stop whatever else failed (`close`); the first failure is thrown.
                let answers = try qmp.executeAll([("blockdev-add", overlay), ("transaction", ["actions": actions])] + serverCommands())
                try noteServer(answers.dropFirst(2).first)
                _ = try answers[0].get()
                _ = try answers[1].get()
                TestHooks.pause(at: "qemu-after-view")
                try serverFailure(answers.dropFirst(2).first)
            }
            // Only once our own server runs: never on one of someone else's.
            try addExport(of: overlayNode, bitmap: temporaryBitmap)
        } catch {
            try? close()
            abandon()
            throw error
        }
    }

    /// Creates the scratch file and formats it as an empty qcow2 of the disk's size (the
    /// layout a restore writes: 64 KiB clusters, no data), for one `blockdev-add` to open as
    /// the overlay, the live node as its backing. QEMU's own `blockdev-create` would be a job
    /// to start, wait for and dismiss: four round trips and an event, a tenth of a tracked
    /// incremental.
    private func writeScratch(size: UInt64) throws {
        try? FileSystem.removeIfExists(scratchPath)
        do {
            let file = try OpenFile(path: scratchPath, mode: [.readWrite, .create, .exclusive])
            try Qcow2Layout(virtualSize: size, allocated: []).writeMetadata(to: file)
        } catch {
            try? FileSystem.removeIfExists(scratchPath)
            throw error
        }
    }

    /// Starts the NBD server on our socket, unless `--nbd-socket` names the one QEMU runs.
    private func startServer() throws {
        let commands = serverCommands()
        let answer = commands.isEmpty ? nil : try qmp.executeAll(commands)[0]
        try noteServer(answer)
        try serverFailure(answer)
    }

    /// `nbd-server-start` on our socket (what a killed run left there removed first), unless
    /// `--nbd-socket` names QEMU's.
    private func serverCommands() -> [(command: String, arguments: QMPObject)] {
        guard request.nbdSocket == nil else { return [] }
        try? FileSystem.removeIfExists(socketPath)
        return [("nbd-server-start", ["addr": ["type": "unix", "data": ["path": socketPath]] as QMPObject])]
    }

    /// A server that started is ours: `close` stops it, and the marker says so to a later
    /// run should this one be killed. It names a running QEMU's server: it needs to be
    /// whole, not to outlive the host (no fsync).
    private func noteServer(_ answer: Result<Any, QemuError>?) throws {
        guard let answer, case .success = answer else { return }
        startedServer = true
        try FileSystem.writeAtomically(Array(socketPath.utf8), to: markerPath, temporaryDirectory: request.runDirectory, durable: false)
    }

    /// Why the server did not start, if it did not.
    private func serverFailure(_ answer: Result<Any, QemuError>?) throws {
        guard let answer, case .failure(let error) = answer else { return }
        guard error.message.contains("already running") else { throw error }
        throw QemuError.busy("Qemu.NbdServerInUse", "QEMU at \(request.qmpSocket) already runs an NBD server (a QEMU runs one at most): pass --nbd-socket with the Unix socket it listens on")
    }

    /// Exports `exportedNode` read-only on the server.
    private func addExport(of exportedNode: String, bitmap: String?) throws {
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
        // Our files go whatever QEMU answers (a QEMU that is gone holds nothing more).
        defer {
            if startedServer {
                try? FileSystem.removeIfExists(markerPath)
                try? FileSystem.removeIfExists(socketPath)
            }
            try? FileSystem.removeIfExists(scratchPath)
        }
        // What of this view exists (a failure part way through leaves some of it).
        let state = try qmp.executeAll([("query-block-exports", [:]), ("query-block-jobs", [:]), ("query-named-block-nodes", ["flat": true])])
        let exports = ((try? state[0].get()) as? [QMPObject] ?? []).compactMap { $0["id"] as? String }.filter { $0 == exportID }
        let jobs = ((try? state[1].get()) as? [QMPObject] ?? []).compactMap { $0["device"] as? String }.filter { $0 == backupJob }
        let names = Set(QemuNode.parse((try? state[2].get()) ?? []).map(\.name))
        let failures = Self.tearDown(qmp: qmp, exports: exports, jobs: jobs, stopServer: startedServer,
                                     nodes: [overlayNode, fileNode].filter(names.contains))
        if let first = failures.first { throw first.error }
    }

    /// The snapshot is committed: the previous snapshot's bitmap and the frozen copy go; the
    /// new bitmap stays for the next snapshot.
    public func commit() throws {
        var gone: [String] = []
        if case .incremental(let base) = plan { gone.append(base) }
        if let temporaryBitmap { gone.append(temporaryBitmap) }
        try removeBitmaps(gone)
    }

    /// The snapshot failed: the new bitmap and the frozen copy go, the previous snapshot's
    /// bitmap stays (the next run reads what changed since it).
    public func abandon() {
        try? removeBitmaps([newBitmap, temporaryBitmap].compactMap { $0 })
    }

    /// Removes the bitmap `name` a deleted snapshot left on `node` of the QEMU at
    /// `qmpSocket`: no later snapshot can be incremental from it. Best effort (each answer
    /// waited for 3 s at most), and only while no view is being made on that QEMU (its
    /// lock): a QEMU that is gone, busy or holding its monitor for another client keeps the
    /// bitmap, and the next view of that disk removes it as stale. True when QEMU does not
    /// hold it. The caller passes only the name this repository gives this snapshot's
    /// bitmap (`ChangeTracking.bitmapName`), so whatever QEMU answers at that socket now, a
    /// bitmap so named is ours.
    public static func removeBitmap(qmpSocket: String, node: String, name: String) -> Bool {
        // A prune deletes many snapshots of one disk: a socket that did not answer is not
        // asked again for a minute.
        let now = Date()
        guard unanswered.withLock({ $0[qmpSocket].map { now.timeIntervalSince($0) > 60 } ?? true }) else { return false }
        guard let qmp = try? QMPClient(socketPath: qmpSocket, timeout: 3) else {
            unanswered.withLock { $0[qmpSocket] = now }
            return false
        }
        guard let lock = try? viewLock(qemuKey(qmp), in: ViewRequest.defaultRunDirectory) else { return false }
        defer { withExtendedLifetime(lock) {} }
        do {
            try qmp.execute("block-dirty-bitmap-remove", ["node": node, "name": name])
            return true
        } catch {
            return error.message.contains("Dirty bitmap") && error.message.contains("not found")
        }
    }

    /// The lock that one view at a time holds on the QEMU `key` names; nil while another
    /// process holds it.
    private static func viewLock(_ key: String, in runDirectory: String) throws -> FileLock? {
        try FileSystem.makeDirectories(runDirectory)
        return try FileLock.tryAcquire(path: "\(runDirectory)/\(key).lock", kind: .exclusive)
    }

    /// Monitor sockets that did not answer `removeBitmap`, and when.
    private static let unanswered = Mutex<[String: Date]>([:])

    /// Removes bitmaps of the node in one round trip; one already gone is done.
    private func removeBitmaps(_ names: [String]) throws {
        guard !names.isEmpty else { return }
        for answer in try qmp.executeAll(names.map { ("block-dirty-bitmap-remove", ["node": node.name, "name": $0]) }) {
            if case .failure(let error) = answer, !(error.message.contains("not found") || error.message.contains("Dirty bitmap")) { throw error }
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

    /// Removes what killed runs left on this QEMU, as `found` shows it: exports, the NBD
    /// server (when the marker says a run of ours started it on this same QEMU), jobs, then
    /// nodes (overlays before the file nodes under them). Bitmaps are the node's business:
    /// see `ChangeTracking.stale`. Returns whether it removed a node.
    private static func removeStale(qmp: QMPClient, found: BlockState, markerPath: String, removed: inout [String]) throws -> Bool {
        let ours = { (id: String?) in id?.hasPrefix(NodeChoice.ownPrefix) ?? false }
        let exports = found.exports.compactMap { $0["id"] as? String }.filter(ours)
        var stopServer = false
        if FileSystem.exists(markerPath) {
            // The marker names this QEMU (its process id and start time are in the path):
            // the server running there is the one a killed run of ours started.
            // Unless someone has added an NBD export of their own to it since.
            stopServer = !found.exports.contains { $0["type"] as? String == "nbd" && !ours($0["id"] as? String) }
        }
        let concluded = found.jobs.filter { ours($0["id"] as? String) && $0["status"] as? String == "concluded" }.compactMap { $0["id"] as? String }
        // A concluded job has ended: it is dismissed, not cancelled.
        let jobs = found.blockJobs.compactMap { $0["device"] as? String }.filter { ours($0) && !concluded.contains($0) }
        let nodes = QemuNode.parse(found.nodes).map(\.name)
        let staleNodes = ["disksnap-o-", "disksnap-f-"].flatMap { prefix in nodes.filter { $0.hasPrefix(prefix) } }
        guard !exports.isEmpty || stopServer || !jobs.isEmpty || !concluded.isEmpty || !staleNodes.isEmpty else { return false }
        _ = try? qmp.executeAll(concluded.map { ("job-dismiss", ["id": $0]) })
        let failures = tearDown(qmp: qmp, exports: exports, jobs: jobs, stopServer: stopServer, nodes: staleNodes)
        if stopServer { try? FileSystem.removeIfExists(markerPath) }
        // A server that would not stop is left (another client may have started it).
        if let failure = failures.first(where: { $0.what != "NBD server" }) { throw failure.error }
        removed += exports.map { "export \($0)" } + (stopServer && !failures.contains { $0.what == "NBD server" } ? ["NBD server"] : [])
            + jobs.map { "job \($0)" } + staleNodes.map { "node \($0)" }
        return !staleNodes.isEmpty
    }

    /// Removes exports, block jobs and nodes of ours from QEMU, in the order their references
    /// need, in three round trips: the exports (hard: their clients are cut off) and the jobs
    /// (cancelled: the copy-before-write filter goes) together, each waited for by its event;
    /// then, together, the NBD server (`stopServer`) and the nodes, in the order given (an
    /// overlay before the file node under it). Every step is tried; the failures are
    /// returned, each with what it was removing.
    private static func tearDown(qmp: QMPClient, exports: [String], jobs: [String], stopServer: Bool, nodes: [String]) -> [(what: String, error: QemuError)] {
        var failures: [(what: String, error: QemuError)] = []
        func collect(_ answers: [Result<Any, QemuError>], _ what: [String]) {
            for (answer, what) in zip(answers, what) { if case .failure(let error) = answer { failures.append((what, error)) } }
        }
        do {
            let first = exports.map { ("block-export-del", ["id": $0, "mode": "hard"] as QMPObject) } + jobs.map { ("block-job-cancel", ["device": $0, "force": true] as QMPObject) }
            if !first.isEmpty {
                let answers = try qmp.executeAll(first)
                collect(answers, exports.map { "export \($0)" } + jobs.map { "job \($0)" })
                // An event that does not come is a failure, and the last steps are still tried.
                for (id, answer) in zip(exports, answers) where (try? answer.get()) != nil {
                    do { _ = try qmp.waitForEvent("BLOCK_EXPORT_DELETED", timeout: 30) { $0["id"] as? String == id } } catch { failures.append(("export \(id)", error)) }
                }
                for (id, answer) in zip(jobs, answers.dropFirst(exports.count)) where (try? answer.get()) != nil {
                    do { _ = try qmp.waitForEvent(["BLOCK_JOB_CANCELLED", "BLOCK_JOB_COMPLETED"], timeout: 30) { $0["device"] as? String == id } } catch { failures.append(("job \(id)", error)) }
                }
            }
            // A file node made with its overlay goes with it: not finding it then is done.
            let last = (stopServer ? [("nbd-server-stop", [:] as QMPObject)] : []) + nodes.map { ("blockdev-del", ["node-name": $0] as QMPObject) }
            if !last.isEmpty {
                let answers = try qmp.executeAll(last).map { answer -> Result<Any, QemuError> in
                    if case .failure(let error) = answer, error.message.hasPrefix("blockdev-del: Failed to find node") { return .success([:] as QMPObject) }
                    return answer
                }
                collect(answers, (stopServer ? ["NBD server"] : []) + nodes.map { "node \($0)" })
            }
        } catch {
            failures.append(("QEMU", error))
        }
        return failures
    }
}
