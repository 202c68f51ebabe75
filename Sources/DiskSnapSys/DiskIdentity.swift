#if canImport(Glibc)
import Glibc
#endif
import CBlkid

/// What libblkid finds in one place of a disk: a filesystem, swap, RAID or crypto header.
public struct FilesystemInfo: Codable, Sendable, Equatable {
    /// `TYPE`: ext4, xfs, vfat, swap, crypto_LUKS, ...
    public var type: String?
    public var uuid: String?
    public var label: String?
    public var version: String?
    /// `USAGE`: filesystem, raid, crypto, other.
    public var usage: String?

    enum CodingKeys: String, CodingKey {
        case type, uuid = "UUID", label, version, usage
    }

    public init(type: String? = nil, uuid: String? = nil, label: String? = nil, version: String? = nil, usage: String? = nil) {
        self.type = type
        self.uuid = uuid
        self.label = label
        self.version = version
        self.usage = usage
    }
}

/// One entry of a partition table, in bytes.
public struct Partition: Codable, Sendable, Equatable {
    public var number: Int
    public var start: UInt64
    public var size: UInt64
    /// GPT partition type GUID (lowercase), or the DOS type code in hex ("83").
    public var type: String
    /// `PARTUUID`.
    public var uuid: String?
    /// GPT partition name.
    public var name: String?
    public var content: FilesystemInfo?

    enum CodingKeys: String, CodingKey {
        case number, start, size, type, uuid = "UUID", name, content
    }
}

/// Who a disk is: size, sectors, partition table, partitions and what is on them.
public struct DiskIdentity: Codable, Sendable, Equatable {
    public var size: UInt64
    public var logicalSectorSize: UInt32?
    public var physicalSectorSize: UInt32?
    /// `PTTYPE`: gpt, dos, ... nil when the disk has no table.
    public var partitionTableType: String?
    /// `PTUUID`.
    public var partitionTableUUID: String?
    /// Set when a table is present but damaged or ambiguous: the disk is not "empty".
    public var problem: String?
    public var partitions: [Partition] = []
    /// Content of the whole disk when it has no partition table (a bare filesystem).
    public var content: FilesystemInfo?

    /// Every filesystem UUID and label on the disk (whole disk and partitions).
    public var filesystems: [FilesystemInfo] { ([content] + partitions.map(\.content)).compactMap { $0 } }
}

/// libblkid behind Swift types. Every probe is freed on every path.
public enum DiskProbe {
    public static func identify(path: String) throws(SystemError) -> DiskIdentity {
        let file = try OpenFile(path: path)
        let status = try file.status()
        var identity = DiskIdentity(size: status.size)
        if status.isBlockDevice {
            identity.size = try BlockDevice.size(file)
            identity.logicalSectorSize = try? BlockDevice.logicalSectorSize(file)
            identity.physicalSectorSize = try? BlockDevice.physicalSectorSize(file)
        }
        guard identity.size > 0, let probe = blkid_new_probe() else { return identity }
        defer { blkid_free_probe(probe) }
        guard blkid_probe_set_device(probe, file.descriptor, 0, blkid_loff_t(identity.size)) == 0 else {
            throw SystemError(errno: 5, operation: "libblkid: probe", path: path)
        }
        blkid_probe_enable_partitions(probe, 1)
        blkid_probe_set_partitions_flags(probe, BLKID_PARTS_ENTRY_DETAILS)
        enableSuperblocks(probe)
        switch blkid_do_safeprobe(probe) {
        case 0:
            identity.partitionTableType = value(probe, "PTTYPE")
            identity.partitionTableUUID = value(probe, "PTUUID")
            identity.content = filesystem(probe)
        case -2:
            identity.problem = "ambiguous: several signatures at the start of the disk, libblkid refuses to choose"
        case 1:
            break  // nothing found: an empty or unknown disk
        default:
            throw SystemError(errno: 5, operation: "libblkid: probe", path: path)
        }
        if identity.partitionTableType == "PMBR" {
            identity.problem = "protective MBR without a valid GPT: the GPT headers are damaged"
        }
        if let list = blkid_probe_get_partitions(probe), identity.partitionTableType != nil {
            for i in 0..<max(0, Int(blkid_partlist_numof_partitions(list))) {
                guard let part = blkid_partlist_get_partition(list, Int32(i)) else { continue }
                identity.partitions.append(partition(part, file: file, diskSize: identity.size, isGPT: identity.partitionTableType == "gpt"))
            }
        }
        return identity
    }

    private static func partition(_ part: blkid_partition, file: OpenFile, diskSize: UInt64, isGPT: Bool) -> Partition {
        let start = UInt64(max(0, blkid_partition_get_start(part))) * 512
        let size = UInt64(max(0, blkid_partition_get_size(part))) * 512
        let type = isGPT ? (blkid_partition_get_type_string(part).map { String(cString: $0).lowercased() } ?? "")
                         : String(blkid_partition_get_type(part), radix: 16)
        var result = Partition(number: Int(blkid_partition_get_partno(part)), start: start, size: size, type: type,
                               uuid: blkid_partition_get_uuid(part).map { String(cString: $0) },
                               name: blkid_partition_get_name(part).map { String(cString: $0) }, content: nil)
        let isExtended = !isGPT && ["5", "f", "85"].contains(type)
        if !isExtended, size > 0, start + size <= diskSize {
            result.content = probeContent(file: file, offset: start, size: size)
        }
        return result
    }

    /// What is at `offset ..< offset + size` of an open disk.
    public static func probeContent(file: OpenFile, offset: UInt64, size: UInt64) -> FilesystemInfo? {
        guard let probe = blkid_new_probe() else { return nil }
        defer { blkid_free_probe(probe) }
        guard blkid_probe_set_device(probe, file.descriptor, blkid_loff_t(offset), blkid_loff_t(size)) == 0 else { return nil }
        enableSuperblocks(probe)
        guard blkid_do_safeprobe(probe) == 0 else { return nil }
        return filesystem(probe)
    }

    private static func enableSuperblocks(_ probe: blkid_probe) {
        blkid_probe_enable_superblocks(probe, 1)
        blkid_probe_set_superblocks_flags(probe, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID | BLKID_SUBLKS_LABEL
                                          | BLKID_SUBLKS_VERSION | BLKID_SUBLKS_USAGE)
    }

    private static func filesystem(_ probe: blkid_probe) -> FilesystemInfo? {
        let info = FilesystemInfo(type: value(probe, "TYPE"), uuid: value(probe, "UUID"), label: value(probe, "LABEL"),
                                  version: value(probe, "VERSION"), usage: value(probe, "USAGE"))
        return info == FilesystemInfo() ? nil : info
    }

    private static func value(_ probe: blkid_probe, _ name: String) -> String? {
        var data: UnsafePointer<CChar>?
        var length = 0
        guard blkid_probe_lookup_value(probe, name, &data, &length) == 0, let data else { return nil }
        return String(cString: data)
    }

    /// Resolves `UUID=`, `LABEL=`, `PARTUUID=`, `PTUUID=` to a block device path on this
    /// machine, as `findfs` does; nil when libblkid knows none.
    public static func evaluateTag(_ token: String, _ value: String) -> String? {
        guard let result = blkid_evaluate_tag(token, value, nil) else { return nil }
        defer { free(result) }
        return String(cString: result)
    }
}
