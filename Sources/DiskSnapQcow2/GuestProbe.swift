import DiskSnapSys

/// libblkid's view of a disk as its guest sees it. For a raw image or a block device that is
/// `DiskProbe.identify`; libblkid cannot read through qcow2, so for a qcow2 image the guest
/// bytes libblkid looks at are copied into a sparse file of the virtual size first: the
/// first and last 2 MiB (partition tables, their backups), then the first 2 MiB of each
/// partition found (filesystem, swap and LUKS superblocks), and that file is probed.
public enum GuestProbe {
    static let window: UInt64 = 2 << 20

    /// `qcow2`: true or false as the caller was told (`--format`), nil to detect it.
    public static func identify(path: String, qcow2: Bool? = nil, allowBacking: Bool = true) throws -> DiskIdentity {
        guard qcow2 ?? Qcow2Image.isQcow2(path) else { return try DiskProbe.identify(path: path) }
        let image = try Qcow2Image(path: path, allowBacking: allowBacking)
        let temporary = "/tmp/" + FileSystem.uniqueTemporaryName(for: "disksnap-guest-probe")
        let copy = try OpenFile(path: temporary, mode: [.readWrite, .create, .exclusive])
        defer { try? FileSystem.removeIfExists(temporary) }
        try copy.truncate(to: image.virtualSize)
        var buffer = [UInt8](repeating: 0, count: Int(window))
        func copyRange(_ start: UInt64, _ end: UInt64) throws {
            let lower = min(start, image.virtualSize), upper = min(end, image.virtualSize)
            guard lower < upper else { return }
            let count = Int(upper - lower)
            try buffer.withUnsafeMutableBytes { raw in
                let slot = UnsafeMutableRawBufferPointer(rebasing: raw[..<count])
                try image.read(into: slot, at: lower)
                if !isAllZero(UnsafeRawBufferPointer(slot)) { try copy.write(UnsafeRawBufferPointer(slot), at: lower) }
            }
        }
        try copyRange(0, window)
        try copyRange(image.virtualSize > window ? image.virtualSize - window : 0, image.virtualSize)
        let tables = try DiskProbe.identify(path: temporary)
        for part in tables.partitions { try copyRange(part.start, part.start + min(part.size, window)) }
        var identity = try DiskProbe.identify(path: temporary)
        identity.size = image.virtualSize
        return identity
    }
}
