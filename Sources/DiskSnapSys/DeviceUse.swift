/// Who is using a disk that a restore would overwrite: mounts of it or of its partitions
/// (/proc/self/mountinfo), devices stacked on it (/sys/dev/block/M:m/holders: LVM, dm-crypt,
/// md), and for an image file, loop devices reading it (/sys/block/loop*/loop/backing_file).
/// The `O_EXCL` open a block device restore makes catches the rest (EBUSY while the kernel
/// holds the device); these checks exist to name the user in the error.
public enum DeviceUse {
    /// Why the block device `device` (major:minor) is in use, one line per user; empty when free.
    public static func users(ofDevice device: UInt64, mountInfo: String? = nil) -> [String] {
        let name = "\(BlockDevice.major(device)):\(BlockDevice.minor(device))"
        var users = Mounts.mounts(ofDevice: device, mountInfo: mountInfo).map { "mounted at \($0.mountPoint)" }
        let sys = "/sys/dev/block/\(name)"
        for holder in (try? FileSystem.listDirectory(sys + "/holders")) ?? [] {
            users.append("held by \(holder)")
        }
        // Partitions of a whole disk: /sys/dev/block/M:m/<partition>/dev.
        for entry in (try? FileSystem.listDirectory(sys)) ?? [] where FileSystem.exists("\(sys)/\(entry)/partition") {
            guard let text = try? FileSystem.readFile("\(sys)/\(entry)/dev"),
                  let number = parseDeviceNumber(String(decoding: text, as: UTF8.self)) else { continue }
            users += Mounts.mounts(ofDevice: number, mountInfo: mountInfo).map { "partition \(entry) mounted at \($0.mountPoint)" }
        }
        return users
    }

    /// Loop devices whose backing file is `status` (compared by device and inode, so any path
    /// to the file counts).
    public static func loopDevices(backedBy status: FileStatus) -> [String] {
        var found: [String] = []
        for name in (try? FileSystem.listDirectory("/sys/block")) ?? [] where name.hasPrefix("loop") {
            guard let text = try? FileSystem.readFile("/sys/block/\(name)/loop/backing_file") else { continue }
            var path = String(decoding: text, as: UTF8.self)
            while path.last == "\n" { path.removeLast() }
            if path.hasSuffix(" (deleted)") { continue }
            if let backing = try? FileSystem.statusIfExists(path), backing.device == status.device, backing.inode == status.inode {
                found.append("/dev/\(name)")
            }
        }
        return found
    }

    /// "M:m" (as in sysfs `dev` files) as a device number.
    static func parseDeviceNumber(_ text: String) -> UInt64? {
        let parts = text.split(whereSeparator: { $0 == ":" || $0 == "\n" })
        guard parts.count == 2, let major = UInt32(parts[0]), let minor = UInt32(parts[1]) else { return nil }
        return BlockDevice.makeDevice(major: major, minor: minor)
    }
}
