import Foundation
import DiskSnapSys

/// A point-in-time view of a running VM's disk, read over NBD: QEMU's own
/// (`PointInTimeView`, through QMP) or libvirt's (`LibvirtView`, its backup API).
public protocol LiveDiskView: AnyObject {
    var socketPath: String { get }
    var exportName: String { get }
    /// The NBD meta context with the extents changed since the base (incremental plans).
    var dirtyContext: String? { get }
    /// How the instant was made (the record's `ConsistencyMethod`).
    var method: String { get }
    var plan: TrackingPlan { get }
    var frozen: FreezeOutcome? { get }
    /// What killed runs had left, removed first.
    var removedStale: [String] { get }
    /// Ends the view once the last NBD connection is closed.
    func close() throws
    /// The snapshot is committed: what the previous snapshot left for tracking goes.
    func commit() throws
    /// The snapshot failed: what this one began for tracking goes, the base stays.
    func abandon()
}

extension PointInTimeView: LiveDiskView {}

/// `create --domain NAME[:TARGET]`: which libvirt domain and disk.
public struct LibvirtTarget: Sendable {
    /// `qemu:///system`, or `$LIBVIRT_DEFAULT_URI`, or `--connect`.
    public var uri: String
    public var domain: String
    /// `vda`; nil: the disk whose source is the image given, else the domain's only disk.
    public var target: String?
    /// `--freeze`: libvirt freezes the guest through its agent around the backup's instant.
    public var freeze = false
    public var freezeLimit: Double = 30

    public init(uri: String, domain: String, target: String?) {
        self.uri = uri
        self.domain = domain
        self.target = target
    }

    /// Parses `NAME[:TARGET]`.
    public init(uri: String, parsing value: String) throws {
        let parts = value.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard let name = parts.first, !name.isEmpty, parts.count == 1 || !parts[1].isEmpty else {
            throw QemuError("InvalidParameter.Domain", "--domain '\(value)' is not NAME or NAME:TARGET (a libvirt domain, and a disk target such as vda)", exitStatus: .invalidParameter)
        }
        self.init(uri: uri, domain: name, target: parts.count == 2 ? parts[1] : nil)
    }

    public static var defaultURI: String { FileSystem.environment("LIBVIRT_DEFAULT_URI") ?? "qemu:///system" }
}

/// A domain's disk as libvirt reports it, connected: what `create --domain` reads.
public final class LibvirtDiskHandle {
    public let target: LibvirtTarget
    public let disk: LibvirtDisk
    /// Every other disk's target: the backup and the checkpoint leave them out.
    public let otherTargets: [String]
    public let running: Bool
    let connection: LibvirtConnection
    let domain: LibvirtDomain
    let uuid: String

    /// Connects and finds the disk (`imagePath`: the registered disk's path, which must be
    /// the disk's source).
    public static func locate(_ target: LibvirtTarget, imagePath: String?) throws -> LibvirtDiskHandle {
        let connection: LibvirtConnection
        do {
            connection = try LibvirtConnection(uri: target.uri)
        } catch {
            throw QemuError("Libvirt.Unreachable", error.number == 0 ? "--domain needs libvirt: \(error.message)"
                            : "cannot connect to libvirt at \(target.uri): \(error.message) (is libvirtd running?)", exitStatus: .notFound)
        }
        let domain: LibvirtDomain
        do {
            domain = try connection.domain(named: target.domain)
        } catch {
            if error.number == LibvirtError.noDomain {
                throw QemuError("Libvirt.DomainNotFound", "libvirt at \(target.uri) has no domain \(target.domain)", exitStatus: .notFound)
            }
            throw Self.failure(error)
        }
        do {
            let xml = try domain.xml()
            guard let disks = LibvirtDisk.parse(domainXML: xml) else {
                throw QemuError("Libvirt.CommandFailed", "libvirt's XML of domain \(target.domain) cannot be read", exitStatus: .ioError)
            }
            var isImage: ((String) -> Bool)?
            if target.target == nil, let imagePath, let image = try? FileSystem.status(imagePath) {
                isImage = { path in
                    guard let status = try? FileSystem.statusIfExists(path) else { return false }
                    return status.device == image.device && status.inode == image.inode
                }
            }
            let disk = try LibvirtDisk.choose(disks: disks, target: target.target, domain: target.domain, isImage: isImage)
            guard disk.sourcePath != nil, disk.type == "file" || disk.type == "block" else {
                throw QemuError("Libvirt.DiskUnsupported", "disk \(disk.target) of domain \(target.domain) is a \(disk.type) disk: disksnap snapshots file and block disks", exitStatus: .invalidParameter)
            }
            guard disk.device == "disk" || disk.device == "lun" else {
                throw QemuError("Libvirt.DiskUnsupported", "\(disk.target) of domain \(target.domain) is a \(disk.device), not a disk", exitStatus: .invalidParameter)
            }
            if let imagePath, let source = disk.sourcePath, let image = try? FileSystem.status(imagePath),
               let status = try? FileSystem.status(source), !(status.device == image.device && status.inode == image.inode) {
                throw QemuError("Qemu.NodeNotFound", "disk \(disk.target) of domain \(target.domain) is \(source), not \(imagePath)", exitStatus: .notFound)
            }
            return LibvirtDiskHandle(target: target, disk: disk, otherTargets: disks.map(\.target).filter { $0 != disk.target },
                                     running: try domain.isActive(), connection: connection, domain: domain, uuid: try domain.uuid())
        } catch let error as LibvirtError {
            throw Self.failure(error)
        }
    }

    private init(target: LibvirtTarget, disk: LibvirtDisk, otherTargets: [String], running: Bool,
                 connection: LibvirtConnection, domain: LibvirtDomain, uuid: String) {
        self.target = target
        self.disk = disk
        self.otherTargets = otherTargets
        self.running = running
        self.connection = connection
        self.domain = domain
        self.uuid = uuid
    }

    static func failure(_ error: LibvirtError) -> QemuError {
        QemuError("Libvirt.CommandFailed", "\(error.call): \(error.message) (libvirt error \(error.number))", exitStatus: .ioError)
    }
}

/// What a libvirt view is asked for.
public struct LibvirtViewRequest: Sendable {
    public var snapshotID: String
    public var repositoryID: String
    /// What the disk's previous snapshot left (its checkpoint in `bitmap`).
    public var base: TrackingBase?
    /// This repository's checkpoints that records still name: never removed as stale.
    public var wantedCheckpoints: Set<String> = []
    /// Where libvirt puts the scratch file (what the guest overwrites during the read).
    public var scratchDirectory: String
    public var runDirectory: String
    public var freezer: GuestFreezer?

    public init(snapshotID: String, repositoryID: String, scratchDirectory: String) {
        self.snapshotID = snapshotID
        self.repositoryID = repositoryID
        self.scratchDirectory = scratchDirectory
        self.runDirectory = FileSystem.environment("DISKSNAP_RUN_DIR") ?? "/run/disksnap"
    }
}

/// A point-in-time view of a libvirt domain's disk through libvirt's own backup API
/// (docs/DESIGN.md, "libvirt domains"): `virDomainBackupBegin` in pull mode, with a
/// checkpoint made at the same instant for the next snapshot, exported over NBD on a
/// socket of ours; `virDomainAbortJob` ends it. libvirt owns the domain's QEMU: nothing is
/// asked of QEMU behind its back.
public final class LibvirtView: LiveDiskView {
    public static let exportBitmap = "disksnap-changed"

    public let socketPath: String
    public let exportName: String
    public let dirtyContext: String?
    public let method = "libvirt-pull-backup"
    public let plan: TrackingPlan
    public let frozen: FreezeOutcome?
    public let removedStale: [String]
    /// The checkpoint this view made, for the next snapshot (nil: the disk cannot keep one).
    public let checkpoint: String?
    public let handle: LibvirtDiskHandle

    private let lock: FileLock
    private let socketDirectory: String
    private var closed = false

    private var domain: LibvirtDomain { handle.domain }

    /// Takes the domain's lock, removes what killed runs left, and begins the backup.
    /// Throws with nothing of this run left in libvirt.
    public static func make(_ handle: LibvirtDiskHandle, _ request: LibvirtViewRequest) throws -> LibvirtView {
        guard handle.running else {
            throw QemuError("Libvirt.DomainNotRunning", "domain \(handle.target.domain) is not running", exitStatus: .conflict)
        }
        try FileSystem.makeDirectories(request.runDirectory)
        let key = "libvirt-\(handle.uuid)"
        guard let lock = try FileLock.tryAcquire(path: "\(request.runDirectory)/\(key).lock", kind: .exclusive) else {
            throw QemuError.busy("Qemu.Busy", "another disksnap is snapshotting a disk of domain \(handle.target.domain); try again when it ends")
        }
        let socketDirectory = "\(request.runDirectory)/\(key)"
        let socketPath = "\(socketDirectory)/nbd.sock"
        let exportName = "disksnap-\(request.snapshotID)"
        let domain = handle.domain
        let target = handle.disk.target
        do {
            var removed: [String] = []
            // Under the lock, a backup job serving on our socket directory is a killed run's.
            if let job = try domain.backupXML() {
                let socket = LibvirtDocuments.backupSocket(job)
                guard let socket, socket.hasPrefix(socketDirectory + "/") else {
                    throw QemuError.busy("Qemu.Busy", "domain \(handle.target.domain) runs a backup job that is not disksnap's (\(socket.map { "serving on \($0)" } ?? "push mode or TCP")): libvirt runs one at a time; try again when it ends")
                }
                try abort(domain)
                removed.append("backup job")
            }
            let base = request.base?.bitmap
            let ownPrefix = ChangeTracking.bitmapName(repositoryID: request.repositoryID, snapshotID: "")
            for name in try domain.checkpointNames() where name.hasPrefix(ownPrefix) && name != base && !request.wantedCheckpoints.contains(name) {
                try deleteCheckpoint(domain, name)
                removed.append("checkpoint \(name)")
            }

            let qcow2 = handle.disk.format == "qcow2"
            let checkpoint = qcow2 ? ChangeTracking.bitmapName(repositoryID: request.repositoryID, snapshotID: request.snapshotID) : nil
            var plan: TrackingPlan
            if qcow2 {
                let disks = try base.flatMap { try domain.checkpointXML(named: $0) }.map { LibvirtDocuments.checkpointDisks($0) ?? [] }
                plan = LibvirtTracking.plan(base: request.base, checkpointDisks: disks, target: target)
            } else {
                plan = .full(reason: "libvirt keeps checkpoints only in qcow2 images (disk \(target) is \(handle.disk.format ?? "raw")): every snapshot of it reads it whole")
            }
            try? FileSystem.removeIfExists(socketPath)
            try? FileSystem.removeDirectory(socketDirectory)
            try FileSystem.makeDirectory(socketDirectory, permissions: 0o700)
            handOver(socketDirectory, toQemuOf: handle.target.domain)
            let scratch = "\(request.scratchDirectory)/disksnap-scratch-\(request.snapshotID).qcow2"
            var incremental: String?
            if case .incremental(let name) = plan { incremental = name }
            let checkpointXML = checkpoint.map {
                LibvirtDocuments.checkpoint(name: $0, description: "disksnap snapshot \(request.snapshotID) of repository \(request.repositoryID)",
                                            target: target, others: handle.otherTargets)
            }
            let backup = { (incremental: String?) in
                LibvirtDocuments.backup(target: target, others: handle.otherTargets, socketPath: socketPath, exportName: exportName,
                                        scratchFile: scratch, incrementalFrom: incremental, exportBitmap: exportBitmap)
            }
            TestHooks.pause(at: "qemu-before-view")
            var frozen: FreezeOutcome?
            do {
                frozen = try begin(domain, xml: backup(incremental), checkpointXML: checkpointXML, freezer: request.freezer)
            } catch let error as LibvirtError where incremental != nil && error.number == LibvirtError.checkpointInconsistent {
                // QEMU was killed or the image changed outside it: the bitmap cannot be trusted.
                try? deleteCheckpoint(domain, incremental!)
                plan = .full(reason: "libvirt cannot use checkpoint \(incremental!): \(error.message)")
                incremental = nil
                frozen = try begin(domain, xml: backup(nil), checkpointXML: checkpointXML, freezer: request.freezer)
            }
            let view = LibvirtView(handle: handle, lock: lock, socketDirectory: socketDirectory, socketPath: socketPath, exportName: exportName,
                                   dirtyContext: incremental == nil ? nil : "qemu:dirty-bitmap:\(exportBitmap)",
                                   plan: plan, frozen: frozen, removedStale: removed, checkpoint: checkpoint)
            TestHooks.pause(at: "qemu-after-view")
            return view
        } catch let error as LibvirtError {
            try? FileSystem.removeDirectory(socketDirectory)
            throw LibvirtDiskHandle.failure(error)
        } catch {
            try? FileSystem.removeDirectory(socketDirectory)
            throw error
        }
    }

    private init(handle: LibvirtDiskHandle, lock: FileLock, socketDirectory: String, socketPath: String, exportName: String,
                 dirtyContext: String?, plan: TrackingPlan, frozen: FreezeOutcome?, removedStale: [String], checkpoint: String?) {
        self.handle = handle
        self.lock = lock
        self.socketDirectory = socketDirectory
        self.socketPath = socketPath
        self.exportName = exportName
        self.dirtyContext = dirtyContext
        self.plan = plan
        self.frozen = frozen
        self.removedStale = removedStale
        self.checkpoint = checkpoint
    }

    /// Ends the backup job (libvirt removes the scratch file and stops the NBD server).
    public func close() throws {
        guard !closed else { return }
        closed = true
        defer {
            try? FileSystem.removeIfExists(socketPath)
            try? FileSystem.removeDirectory(socketDirectory)
        }
        do {
            if let job = try domain.backupXML(), LibvirtDocuments.backupSocket(job) == socketPath {
                try Self.abort(domain)
            }
        } catch let error as LibvirtError {
            throw LibvirtDiskHandle.failure(error)
        }
    }

    /// Committed: the previous snapshot's checkpoint goes (its bitmap with it).
    public func commit() throws {
        guard case .incremental(let base) = plan else { return }
        do { try Self.deleteCheckpoint(domain, base) } catch { throw LibvirtDiskHandle.failure(error) }
    }

    /// Failed: the checkpoint this run made goes; the base stays for the next run.
    public func abandon() {
        if let checkpoint { try? Self.deleteCheckpoint(domain, checkpoint) }
    }

    /// Begins the backup, with the guest frozen around it when asked.
    private static func begin(_ domain: LibvirtDomain, xml: String, checkpointXML: String?, freezer: GuestFreezer?) throws -> FreezeOutcome? {
        guard let freezer else {
            try domain.beginBackup(xml: xml, checkpointXML: checkpointXML)
            return nil
        }
        return try freezer.whileFrozen { try domain.beginBackup(xml: xml, checkpointXML: checkpointXML) }
    }

    private static func abort(_ domain: LibvirtDomain) throws {
        do {
            try domain.abortJob()
        } catch {
            // No job is active any more: ended already.
            guard error.number == LibvirtError.operationInvalid else { throw error }
        }
        let deadline = Date().addingTimeInterval(30)
        while try domain.backupXML() != nil {
            guard Date() < deadline else { throw QemuError.gone("libvirt's backup job on domain \(domain.name) did not end within 30 s of its abort") }
            usleep(10_000)
        }
    }

    /// Deletes a deleted snapshot's checkpoint, if libvirt can be reached; false if not.
    @discardableResult
    public static func removeCheckpoint(uri: String, domain name: String, name checkpoint: String) -> Bool {
        guard let connection = try? LibvirtConnection(uri: uri), let domain = try? connection.domain(named: name) else { return false }
        return (try? deleteCheckpoint(domain, checkpoint)) != nil
    }

    /// Deletes a checkpoint with its bitmap; one whose bitmap is gone (QEMU was killed) is
    /// forgotten instead. Absent is done.
    static func deleteCheckpoint(_ domain: LibvirtDomain, _ name: String) throws(LibvirtError) {
        do {
            try domain.deleteCheckpoint(named: name)
        } catch {
            if error.number == LibvirtError.noCheckpoint { return }
            do {
                try domain.deleteCheckpoint(named: name, metadataOnly: true)
            } catch let second {
                if second.number == LibvirtError.noCheckpoint { return }
                throw error
            }
        }
    }

    /// The libvirt domain a QMP socket reaches, or nil when libvirt does not run its QEMU:
    /// `pid` serves the socket (nil: unknown, as for a process in another PID namespace).
    /// libvirt makes a domain's monitor socket itself, in the domain's directory
    /// (`.../libvirt/qemu/domain-<id>-<name>/`), and hands it to QEMU, so that socket's
    /// peer is the libvirt daemon; another socket's peer is QEMU (`domain(ofQemu:)`). A
    /// socket in such a directory is libvirt's whoever serves it. The domain is named by
    /// the directory when the name is under the 20 characters libvirt cuts it to (else "").
    public static func domain(servingMonitor socketPath: String, peer pid: Int32?) -> String? {
        let directory = FileSystem.baseName(of: FileSystem.directoryName(of: socketPath))
        let parts = directory.split(separator: "-", maxSplits: 2)
        let domainDirectory = socketPath.contains("/libvirt/qemu/") && parts.count == 3 && parts[0] == "domain" && Int(parts[1]) != nil
        // A name of 20 characters there may have been longer.
        let named = domainDirectory && parts[2].count < 20 ? String(parts[2]) : ""
        guard let pid else { return domainDirectory ? named : nil }
        let command = (try? FileSystem.readFile("/proc/\(pid)/comm")).map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
        if let command, ["libvirtd", "virtqemud"].contains(command) { return named }
        return domain(ofQemu: pid) ?? (domainDirectory ? named : nil)
    }

    /// The libvirt domain whose QEMU is process `pid`, or nil when libvirt does not run it:
    /// named by libvirt's pid files (the system daemon's in /run/libvirt/qemu, a session
    /// daemon's in $XDG_RUNTIME_DIR/libvirt/qemu/run), else told by QEMU's command line,
    /// where libvirt always puts the domain's private directory
    /// (`.../libvirt/qemu/domain-<id>-<name>/`) and `-name guest=NAME,...` ("" when only
    /// the directory shows).
    public static func domain(ofQemu pid: Int32) -> String? {
        var pidDirectories = ["/run/libvirt/qemu"]
        if let runtime = FileSystem.environment("XDG_RUNTIME_DIR") { pidDirectories.append("\(runtime)/libvirt/qemu/run") }
        for directory in pidDirectories {
            for name in (try? FileSystem.listDirectory(directory)) ?? [] where name.hasSuffix(".pid") && name != "driver.pid" {
                if processID(inFile: "\(directory)/\(name)") == pid { return String(name.dropLast(4)) }
            }
        }
        guard let commandLine = try? FileSystem.readFile("/proc/\(pid)/cmdline") else { return nil }
        let arguments = commandLine.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard arguments.contains(where: { $0.contains("/libvirt/qemu/domain-") }) else { return nil }
        if let flag = arguments.firstIndex(of: "-name"), flag + 1 < arguments.count,
           let guest = arguments[flag + 1].split(separator: ",").first, guest.hasPrefix("guest=") {
            return String(guest.dropFirst(6))
        }
        return ""
    }

    /// The process id a pid file holds, or nil.
    private static func processID(inFile path: String) -> Int32? {
        (try? FileSystem.readFile(path)).flatMap { Int32(String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// The socket directory belongs to the domain's QEMU process (it creates the socket;
    /// libvirt runs it as its own user), mode 0700: nobody else can connect.
    private static func handOver(_ directory: String, toQemuOf domain: String) {
        guard let pid = processID(inFile: "/run/libvirt/qemu/\(domain).pid") else { return }
        var owner = stat()
        guard stat("/proc/\(pid)", &owner) == 0 else { return }
        _ = chown(directory, owner.st_uid, owner.st_gid)
    }
}

/// Whether the previous snapshot's checkpoint can say what changed (pure; unit-tested).
public enum LibvirtTracking {
    /// `checkpointDisks`: the disks libvirt's checkpoint named by the base keeps a bitmap of;
    /// nil when libvirt has no such checkpoint.
    public static func plan(base: TrackingBase?, checkpointDisks: [String]?, target: String) -> TrackingPlan {
        guard let base else { return .full(reason: "the disk has no earlier accomplished snapshot") }
        guard let name = base.bitmap else {
            return .full(reason: "the previous snapshot \(base.snapshotID) was not taken with libvirt change tracking")
        }
        guard let disks = checkpointDisks else {
            return .full(reason: "libvirt has no checkpoint \(name) that \(base.snapshotID) left (the domain was redefined, transient and restarted, or the checkpoint was deleted)")
        }
        guard disks.contains(target) else {
            return .full(reason: "checkpoint \(name) keeps no bitmap of disk \(target)")
        }
        return .incremental(bitmap: name)
    }
}
