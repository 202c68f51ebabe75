import Synchronization
import DiskSnapSys

/// A qcow2 image read as its guest sees it: `read` returns guest bytes (from this image's
/// data clusters, compressed clusters, zero clusters, or the backing chain), `dataRanges`
/// the guest ranges that may hold data, found from the L1/L2 tables alone. Thread-safe:
/// the pipeline's workers read at once (L2 tables are cached under a lock).
public final class Qcow2Image: Sendable {
    public let path: String
    public let header: Qcow2Header
    public let extensions: Qcow2Extensions
    public let file: OpenFile
    let fileSize: UInt64
    let l1: [UInt64]
    let backing: Backing?
    private let l2Cache = Mutex<[UInt64: [UInt64]]>([:])
    /// L2 tables kept: 4 MiB of them (at least 4), whatever the cluster size. Reads are
    /// sequential (a snapshot, a diff), so this covers 32 GiB of guest disk at 64 KiB clusters;
    /// a count of tables would hold 512 MiB at 2 MiB clusters.
    var l2CacheLimit: Int { max(4, (4 << 20) / Int(header.clusterSize)) }
    public static let maximumChainDepth = 16

    enum Backing: Sendable {
        case raw(OpenFile, size: UInt64)
        case qcow2(Qcow2Image)
    }

    public var virtualSize: UInt64 { header.virtualSize }
    public var clusterSize: UInt64 { header.clusterSize }
    /// Paths of the backing chain, nearest first.
    public var backingChain: [String] {
        switch backing {
        case .none: []
        case .raw(let f, _): [f.path]
        case .qcow2(let image): [image.path] + image.backingChain
        }
    }

    /// True when a file starts with the qcow2 magic.
    public static func isQcow2(_ path: String) -> Bool {
        guard let file = try? OpenFile(path: path), let bytes = try? file.readBytes(count: 4, at: 0), bytes.count == 4 else { return false }
        return bytes == [0x51, 0x46, 0x49, 0xfb]
    }

    /// Opens an image and its backing chain (names resolved relative to the image's
    /// directory, as QEMU does). `allowBacking` false refuses an image with a backing file.
    public convenience init(path: String, allowBacking: Bool = true) throws {
        try self.init(path: path, allowBacking: allowBacking, visited: [])
    }

    private init(path: String, allowBacking: Bool, visited: [(UInt64, UInt64)]) throws {
        self.path = path
        file = try OpenFile(path: path)
        let status = try file.status()
        fileSize = status.size
        guard !visited.contains(where: { $0 == (status.device, status.inode) }) else {
            throw Qcow2Error.corrupt(path, "its backing chain comes back to itself")
        }
        guard visited.count < Self.maximumChainDepth else {
            throw Qcow2Error.unsupported(path, "a backing chain longer than \(Self.maximumChainDepth) images")
        }
        let first = try file.readBytes(count: Int(min(fileSize, 1 << 21)), at: 0)
        header = try Qcow2Header.decode(first, fileSize: fileSize, file: path)
        let extensionStart = header.version == 3 ? Int(header.headerLength) : 72
        extensions = try Qcow2Extensions.decode(Array(first.prefix(Int(min(header.clusterSize, UInt64(first.count))))),
                                                start: extensionStart, file: path)
        if let data = extensions.externalDataFile {
            throw Qcow2Error.unsupported(path, "an external data file (\(data))")
        }
        // L1 table.
        let l1Bytes = try file.readBytes(count: Int(header.l1Size) * 8, at: header.l1TableOffset)
        guard l1Bytes.count == Int(header.l1Size) * 8 else { throw Qcow2Error.corrupt(path, "L1 table is cut short") }
        var r = BigEndianReader(bytes: l1Bytes, file: path)
        l1 = try (0..<Int(header.l1Size)).map { _ in try r.u64() }
        // Backing file.
        if header.backingFileOffset != 0 {
            let nameBytes = try file.readBytes(count: Int(header.backingFileSize), at: header.backingFileOffset)
            let name = String(decoding: nameBytes, as: UTF8.self)
            guard allowBacking else {
                throw Qcow2Error(code: "InvalidDiskId.ValueNotSupported", message: "\(path) has a backing file (\(name)), which --no-backing refuses", exitStatus: .invalidParameter)
            }
            guard !name.contains("://"), !name.hasPrefix("json:") else {
                throw Qcow2Error.unsupported(path, "backing file '\(name)' (only local files)")
            }
            let resolved = name.hasPrefix("/") ? name : FileSystem.directoryName(of: FileSystem.absolutePath(path)) + "/" + name
            guard FileSystem.exists(resolved) else { throw Qcow2Error.corrupt(path, "backing file \(resolved) does not exist") }
            let format = extensions.backingFormat ?? (Self.isQcow2(resolved) ? "qcow2" : "raw")
            switch format {
            case "qcow2":
                backing = .qcow2(try Qcow2Image(path: resolved, allowBacking: true, visited: visited + [(status.device, status.inode)]))
            case "raw":
                let f = try OpenFile(path: resolved)
                let s = try f.status()
                backing = .raw(f, size: s.isBlockDevice ? try BlockDevice.size(f) : s.size)
            default:
                throw Qcow2Error.unsupported(path, "backing file format '\(format)'")
            }
        } else {
            backing = nil
        }
    }

    /// Where a guest cluster's bytes are.
    enum Mapping: Equatable {
        case data(host: UInt64)
        case compressed(host: UInt64, length: Int)
        case zero
        case unallocated
    }

    static let offsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let compressedBit: UInt64 = 1 << 62

    func mapping(cluster: UInt64) throws -> Mapping {
        let entriesPerL2 = header.clusterSize / 8
        let l1Index = cluster / entriesPerL2
        guard l1Index < UInt64(l1.count) else { return .unallocated }
        let l2Offset = l1[Int(l1Index)] & Self.offsetMask
        guard l2Offset != 0 else { return .unallocated }
        let entry = try l2Table(at: l2Offset)[Int(cluster % entriesPerL2)]
        if entry & Self.compressedBit != 0 {
            let x = 62 - (header.clusterBits - 8)
            let host = entry & ((1 << UInt64(x)) - 1)
            let sectors = (entry >> UInt64(x)) & ((1 << UInt64(header.clusterBits - 8)) - 1)
            let length = (sectors + 1) * 512 - (host & 511)
            guard host < fileSize else { throw Qcow2Error.corrupt(path, "compressed cluster \(cluster) at \(host) past the end of the file") }
            return .compressed(host: host, length: Int(min(length, fileSize - host)))
        }
        let host = entry & Self.offsetMask
        if header.version == 3 && entry & 1 != 0 { return .zero }
        guard host != 0 else { return .unallocated }
        // A last data cluster cut by the end of the file reads as zeroes past it (`read`).
        guard host % header.clusterSize == 0, host < fileSize else {
            throw Qcow2Error.corrupt(path, "cluster \(cluster) at \(host) outside the \(fileSize)-byte file")
        }
        return .data(host: host)
    }

    private func l2Table(at offset: UInt64) throws -> [UInt64] {
        if let table = l2Cache.withLock({ $0[offset] }) { return table }
        guard offset % header.clusterSize == 0, offset <= fileSize, header.clusterSize <= fileSize - offset else {
            throw Qcow2Error.corrupt(path, "L2 table at \(offset) outside the \(fileSize)-byte file")
        }
        let bytes = try file.readBytes(count: Int(header.clusterSize), at: offset)
        var r = BigEndianReader(bytes: bytes, file: path)
        let table = try (0..<Int(header.clusterSize / 8)).map { _ in try r.u64() }
        l2Cache.withLock { cache in
            if cache.count >= l2CacheLimit { cache.removeAll(keepingCapacity: true) }
            cache[offset] = table
        }
        return table
    }

    /// Guest byte ranges that may hold data: clusters allocated in this image, and where a
    /// cluster is unallocated, the backing chain's data there. Zero clusters are left out.
    public func dataRanges() throws -> [ByteRange] {
        let cs = header.clusterSize
        let clusters = virtualSize / cs + (virtualSize % cs == 0 ? 0 : 1)
        let below = try backingDataRanges()
        var ranges: [ByteRange] = []
        var b = 0  // cursor into `below`
        func add(_ start: UInt64, _ end: UInt64) {
            guard start < end else { return }
            if let last = ranges.last, last.end >= start {
                ranges[ranges.count - 1].end = max(last.end, end)
            } else {
                ranges.append(ByteRange(start: start, end: end))
            }
        }
        func addBacking(_ start: UInt64, _ end: UInt64) {
            while b < below.count && below[b].end <= start { b += 1 }
            var i = b
            while i < below.count && below[i].start < end {
                add(max(start, below[i].start), min(end, below[i].end))
                i += 1
            }
        }
        let entriesPerL2 = cs / 8
        var cluster: UInt64 = 0
        while cluster < clusters {
            let l1Index = cluster / entriesPerL2
            let start = cluster * cs
            if l1Index >= UInt64(l1.count) || l1[Int(l1Index)] & Self.offsetMask == 0 {
                let next = min((l1Index + 1) * entriesPerL2, clusters)
                addBacking(start, min(next * cs, virtualSize))
                cluster = next
                continue
            }
            let end = min(start + cs, virtualSize)
            switch try mapping(cluster: cluster) {
            case .data, .compressed: add(start, end)
            case .zero: break
            case .unallocated: addBacking(start, end)
            }
            cluster += 1
        }
        return ranges
    }

    private func backingDataRanges() throws -> [ByteRange] {
        switch backing {
        case .none:
            return []
        case .raw(let f, let size):
            let s = try f.status()
            let limit = min(size, virtualSize)
            return s.isRegularFile ? try Extents.dataRanges(of: f, size: limit) : (limit > 0 ? [ByteRange(start: 0, end: limit)] : [])
        case .qcow2(let image):
            return try image.dataRanges().compactMap { r in r.start < virtualSize ? ByteRange(start: r.start, end: min(r.end, virtualSize)) : nil }
        }
    }

    /// Fills `output` with guest bytes from `offset` (reads past the virtual size are zeroes).
    public func read(into output: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        let cs = header.clusterSize
        var done = 0
        var scratch: UnsafeMutableRawBufferPointer?
        defer { scratch?.deallocate() }
        while done < output.count {
            let position = offset + UInt64(done)
            let slot = UnsafeMutableRawBufferPointer(rebasing: output[done...])
            guard position < virtualSize else {
                slot.initializeMemory(as: UInt8.self, repeating: 0)
                return
            }
            let cluster = position / cs, within = position % cs
            var length = Int(min(cs - within, UInt64(slot.count), virtualSize - position))
            switch try mapping(cluster: cluster) {
            case .data(let host):
                // Following clusters that lie right after this one in the file: one pread.
                var next = cluster + 1
                while UInt64(length) < UInt64(slot.count), next * cs < virtualSize, case .data(let h) = try mapping(cluster: next),
                      h == host + (next - cluster) * cs {
                    length = Int(min(UInt64(slot.count), min((next + 1) * cs, virtualSize) - position))
                    next += 1
                }
                let piece = UnsafeMutableRawBufferPointer(rebasing: slot[..<length])
                let n = try file.read(into: piece, at: host + within)
                if n < length {  // a data cluster cut by the end of the file reads as zeroes beyond it
                    UnsafeMutableRawBufferPointer(rebasing: piece[n...]).initializeMemory(as: UInt8.self, repeating: 0)
                }
            case .compressed(let host, let stored):
                if scratch == nil { scratch = .allocate(byteCount: Int(cs), alignment: 64) }
                let input = try file.readBytes(count: stored, at: host)
                let ok = input.withUnsafeBytes { raw in
                    header.compressionType == 1 ? ClusterDecompression.zstdFrame(raw, into: scratch!)
                        : ClusterDecompression.inflateRaw(raw, into: scratch!)
                }
                guard ok else { throw Qcow2Error.corrupt(path, "compressed cluster \(cluster) does not decompress") }
                UnsafeMutableRawBufferPointer(rebasing: slot[..<length])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: scratch![Int(within)..<Int(within) + length]))
            case .zero:
                UnsafeMutableRawBufferPointer(rebasing: slot[..<length]).initializeMemory(as: UInt8.self, repeating: 0)
            case .unallocated:
                try readBacking(into: UnsafeMutableRawBufferPointer(rebasing: slot[..<length]), at: position)
            }
            done += length
        }
    }

    private func readBacking(into output: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        switch backing {
        case .none:
            output.initializeMemory(as: UInt8.self, repeating: 0)
        case .raw(let f, let size):
            let available = offset < size ? Int(min(UInt64(output.count), size - offset)) : 0
            var n = 0
            if available > 0 { n = try f.read(into: UnsafeMutableRawBufferPointer(rebasing: output[..<available]), at: offset) }
            if n < output.count { UnsafeMutableRawBufferPointer(rebasing: output[n...]).initializeMemory(as: UInt8.self, repeating: 0) }
        case .qcow2(let image):
            try image.read(into: output, at: offset)
        }
    }

    /// Why the image is in use by a running VM, or nil: the dirty bit (open for writing by
    /// QEMU, or not closed cleanly), or QEMU's write-permission lock on byte 101 of the file.
    public func liveUse() -> String? {
        if header.incompatibleFeatures & Qcow2Header.dirtyBit != 0 {
            return "has its dirty bit set (a VM has it open for writing, or did not close it cleanly)"
        }
        if FileLocks.heldForWritingByQemu(file) {
            return "is open for writing by another process (QEMU's image lock is held)"
        }
        return nil
    }
}
