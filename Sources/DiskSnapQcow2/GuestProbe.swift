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
        return try identify(size: image.virtualSize) { buffer, offset in try image.read(into: buffer, at: offset) }
    }

    /// The identity of a guest disk of `size` bytes that `read` reads (a qcow2 image, a
    /// running QEMU's point-in-time view): its first and last windows and each partition's
    /// first window copied into a sparse temporary file, which libblkid probes.
    public static func identify(size: UInt64, read: (UnsafeMutableRawBufferPointer, UInt64) throws -> Void) throws -> DiskIdentity {
        let temporary = "/tmp/" + FileSystem.uniqueTemporaryName(for: "disksnap-guest-probe")
        let copy = try OpenFile(path: temporary, mode: [.readWrite, .create, .exclusive])
        defer { try? FileSystem.removeIfExists(temporary) }
        try copy.truncate(to: size)
        let buffer = MemoryPolicy.allocateLarge(byteCount: Int(window))
        defer { buffer.deallocate() }
        func copyRange(_ start: UInt64, _ end: UInt64) throws {
            let lower = min(start, size), upper = min(end, size)
            guard lower < upper else { return }
            let slot = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(upper - lower)])
            try read(slot, lower)
            if !isAllZero(UnsafeRawBufferPointer(slot)) { try copy.write(UnsafeRawBufferPointer(slot), at: lower) }
        }
        try copyRange(0, window)
        try copyRange(size > window ? size - window : 0, size)
        let tables = try DiskProbe.identify(path: temporary)
        for part in tables.partitions { try copyRange(part.start, part.start + min(part.size, window)) }
        var identity = try DiskProbe.identify(path: temporary)
        identity.size = size
        return identity
    }
}
