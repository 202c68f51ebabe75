import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapQcow2

/// The registered disks of a repository (`disks/<DiskId>.json`).
public struct DiskRegistry: Sendable {
    public let repository: Repository
    public static let diskTypes = ["system", "data"]

    public init(repository: Repository) { self.repository = repository }

    public func disks() throws -> [DiskRecord] {
        try FileSystem.listDirectory(repository.disksDirectory).filter { $0.hasSuffix(".json") }.map { name in
            let path = "\(repository.disksDirectory)/\(name)"
            return try DiskRecord.decode(try repository.readObject(path), file: path)
        }.sorted { ($0.creationTime, $0.diskId) < ($1.creationTime, $1.diskId) }
    }

    /// A disk by id, name, (absolute or relative) path, or tag (`UUID=`, `LABEL=`,
    /// `PARTUUID=`, `PTUUID=`): registered disks' recorded identities first, then libblkid's
    /// view of this machine's devices.
    public func find(_ reference: String) throws -> DiskRecord? {
        let all = try disks()
        if let id = DiskID(reference) { return all.first { $0.diskId == id } }
        if let tag = DiskTag(reference) {
            if let known = all.first(where: { $0.identity.map(tag.matches) == true }) { return known }
            return try tag.devicePath().flatMap { path in all.first { $0.path == path } }
        }
        if let byName = all.first(where: { $0.diskName == reference }) { return byName }
        let path = FileSystem.absolutePath(reference)
        return all.first { $0.path == path }
    }

    public func get(_ reference: String) throws -> DiskRecord {
        guard let disk = try find(reference) else {
            throw CatalogError(code: "InvalidDiskId.NotFound", message: "no disk with id, name or path '\(reference)'", exitStatus: .notFound)
        }
        return disk
    }

    /// Registers a disk. Call with the catalog lock held.
    public func add(path: String, name: String, type: String, instance: String?) throws -> DiskRecord {
        try Self.validateDiskName(name)
        guard Self.diskTypes.contains(type) else {
            throw CatalogError.invalid("InvalidParameter.DiskType", "disk type '\(type)' is not 'system' or 'data'")
        }
        if let instance { try Self.validateDiskName(instance, what: "instance name") }
        let absolute = FileSystem.absolutePath(path)
        guard FileSystem.exists(absolute) else {
            throw CatalogError(code: "InvalidDiskId.NotFound", message: "disk path \(absolute) does not exist", exitStatus: .notFound)
        }
        let existing = try disks()
        if let same = existing.first(where: { $0.path == absolute }) {
            throw CatalogError(code: "InvalidDiskPath.Duplicate", message: "\(absolute) is already registered as \(same.diskId) (\(same.diskName))", exitStatus: .conflict)
        }
        if existing.contains(where: { $0.diskName == name }) {
            throw CatalogError(code: "InvalidDiskName.Duplicate", message: "a disk named '\(name)' exists", exitStatus: .conflict)
        }
        var record = DiskRecord(diskId: .generate(), diskName: name, path: absolute, diskType: type, instance: instance)
        // The guest's view of a qcow2 image; a damaged one is registered as its file (a create
        // with --format raw may still snapshot it).
        record.identity = try (try? GuestProbe.identify(path: absolute)) ?? DiskProbe.identify(path: absolute)
        try repository.writeDisk(RecordJSON.encode(record), record.diskId)
        return record
    }

    /// The disk at `reference` (id, name or path); a path not yet registered is registered
    /// as a data disk named after its file. Call with the catalog lock held.
    public func resolveOrRegister(_ reference: String) throws -> DiskRecord {
        if let disk = try find(reference) { return disk }
        if let tag = DiskTag(reference) {
            guard let path = try tag.devicePath() else {
                throw CatalogError(code: "InvalidDiskId.NotFound", message: "no registered disk or device on this machine has \(reference)", exitStatus: .notFound)
            }
            return try resolveOrRegister(path)
        }
        guard DiskID(reference) == nil, FileSystem.exists(FileSystem.absolutePath(reference)) else {
            throw CatalogError(code: "InvalidDiskId.NotFound", message: "no disk with id, name or path '\(reference)'", exitStatus: .notFound)
        }
        let names = Set(try disks().map(\.diskName))
        let base = Self.nameFromPath(reference)
        var name = base, n = 2
        while names.contains(name) {
            name = "\(base)-\(n)"
            n += 1
        }
        return try add(path: reference, name: name, type: "data", instance: nil)
    }

    public func remove(_ disk: DiskRecord) throws {
        try repository.removeDisk(disk.diskId)
    }

    /// Disk names: 1-128 characters, letters, digits, `_ . : -`, a letter or digit first.
    static func validateDiskName(_ name: String, what: String = "disk name") throws(CatalogError) {
        let allowed = name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "_.:-".unicodeScalars.contains($0) }
        guard (1...128).contains(name.count), allowed, let first = name.unicodeScalars.first, !"_.:-".unicodeScalars.contains(first) else {
            throw CatalogError.invalid("InvalidDiskName.Malformed", "\(what) '\(name)' must be 1-128 letters, digits, '_', '.', ':', '-', starting with a letter or digit")
        }
    }

    public static func nameFromPath(_ path: String) -> String {
        let base = path.split(separator: "/").last.map(String.init) ?? "disk"
        let cleaned = String(base.unicodeScalars.map { scalar -> Character in
            ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar) || "_.:-".unicodeScalars.contains(scalar) ? Character(scalar) : "-"
        }).prefix(100)
        let trimmed = cleaned.drop { "_.:-".contains($0) }
        return trimmed.isEmpty ? "disk" : String(trimmed)
    }
}

/// `UUID=...`, `LABEL=...`, `PARTUUID=...`, `PTUUID=...`, as `blkid -t` and `findfs` take them.
public struct DiskTag: Sendable {
    public static let names = ["UUID", "LABEL", "PARTUUID", "PTUUID"]
    public let name: String
    public let value: String

    public init?(_ text: String) {
        guard let eq = text.firstIndex(of: "="), Self.names.contains(String(text[..<eq])) else { return nil }
        name = String(text[..<eq])
        value = String(text[text.index(after: eq)...]).trimming { $0 == "\"" }
        guard !value.isEmpty else { return nil }
    }

    /// True when the identity holds the tag (UUIDs compared without regard to case).
    public func matches(_ identity: DiskIdentity) -> Bool {
        let same = { (a: String?) in a.map { $0.lowercased() == value.lowercased() } ?? false }
        switch name {
        case "PTUUID": return same(identity.partitionTableUUID)
        case "PARTUUID": return identity.partitions.contains { same($0.uuid) }
        case "UUID": return identity.filesystems.contains { same($0.uuid) }
        default: return identity.filesystems.contains { $0.label == value }
        }
    }

    /// The block device libblkid resolves the tag to on this machine, if any.
    public func devicePath() throws -> String? {
        DiskProbe.evaluateTag(name, value)
    }
}
