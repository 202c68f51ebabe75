/// The machine's block devices, from /sys/block, without locking or waking anything.
public enum BlockDeviceScan {
    public struct Device: Codable, Sendable, Equatable {
        public var name: String
        public var path: String
        public var size: UInt64
        public var model: String?
        public var readOnly: Bool
        public var removable: Bool
        public var rotational: Bool
        /// Where the device is mounted (from /proc/self/mountinfo).
        public var mountPoints: [String]
        /// What libblkid found; nil when not probed.
        public var identity: DiskIdentity?
        /// Why the device was not probed (asleep, removable), when it was not.
        public var notProbed: String?
    }

    /// Every device with a non-zero size. Devices are opened read-only, never exclusively;
    /// removable devices and devices whose runtime power state is `suspended` are not read
    /// (a probe would spin them up or touch the medium), only described from /sys.
    public static func scan(sysBlock: String = "/sys/block") throws(SystemError) -> [Device] {
        var devices: [Device] = []
        for name in try FileSystem.listDirectory(sysBlock) {
            let base = "\(sysBlock)/\(name)"
            guard let sectors = UInt64(read(base + "/size") ?? ""), sectors > 0 else { continue }
            // SCSI/ATA give vendor and model; virtio's "vendor" is a PCI id, not a name.
            let vendor = read(base + "/device/vendor").flatMap { $0.hasPrefix("0x") ? nil : $0 }
            let model = read(base + "/device/model").map { [vendor, $0].compactMap { $0 }.joined(separator: " ") } ?? ""
            var device = Device(name: name, path: "/dev/\(name)", size: sectors * 512, model: model.isEmpty ? nil : model,
                                readOnly: read(base + "/ro") == "1", removable: read(base + "/removable") == "1",
                                rotational: read(base + "/queue/rotational") == "1", mountPoints: [], identity: nil, notProbed: nil)
            if let dev = read(base + "/dev") {
                let parts = dev.split(separator: ":").compactMap { UInt64($0) }
                if parts.count == 2 {
                    let number = (parts[0] << 8) | (parts[1] & 0xff) | ((parts[1] & ~0xff) << 12)
                    device.mountPoints = Mounts.mounts(ofDevice: number).map(\.mountPoint)
                }
            }
            if device.removable {
                device.notProbed = "removable: not read, so no medium is touched"
            } else if read(base + "/device/power/runtime_status") == "suspended" {
                device.notProbed = "asleep (runtime power state suspended): not woken"
            } else if FileSystem.exists(device.path) {
                do {
                    device.identity = try DiskProbe.identify(path: device.path)
                } catch {
                    device.notProbed = "cannot be read: \(error.message)"
                }
            } else {
                device.notProbed = "no device node \(device.path)"
            }
            devices.append(device)
        }
        return devices
    }

    static func read(_ path: String) -> String? {
        guard let bytes = try? FileSystem.readFile(path) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self).trimming { $0.isWhitespace }
        return text.isEmpty ? nil : text
    }
}

extension String {
    /// The string without the leading and trailing characters that match `drop`.
    public func trimming(_ drop: (Character) -> Bool) -> String {
        var s = Substring(self)
        while let c = s.first, drop(c) { s = s.dropFirst() }
        while let c = s.last, drop(c) { s = s.dropLast() }
        return String(s)
    }
}
