import DiskSnapSys

/// The layout of a qcow2 v3 image written in one pass by a restore: 64 KiB clusters,
/// 16-bit refcounts, no backing file, and a data cluster for each guest cluster that holds
/// data (the others stay unallocated and read as zeroes: the image is sparse).
///
///     cluster 0            header (104 bytes, then the end-of-extensions marker)
///     L1 table             l1Clusters
///     refcount table       refcountTableClusters
///     refcount blocks      refcountBlocks (every used cluster counts 1)
///     L2 tables            one per 512 MiB of guest disk that holds data
///     data clusters        in guest order: consecutive guest clusters are consecutive here
///
/// Every cluster in use has refcount 1, so L1 and L2 entries carry QCOW_OFLAG_COPIED, as
/// `qemu-img check` expects.
public struct Qcow2Layout: Sendable {
    public static let clusterBits: UInt64 = 16
    public static let clusterSize: UInt64 = 1 << clusterBits
    static let entriesPerTable = clusterSize / 8
    static let refcountsPerBlock = clusterSize / 2
    static let copied: UInt64 = 1 << 63

    public let virtualSize: UInt64
    /// Guest cluster numbers that hold data, ascending.
    public let allocated: [UInt64]
    let l1Size: UInt64
    let l1Clusters: UInt64
    let refcountTableClusters: UInt64
    let refcountBlocks: UInt64
    /// L1 indexes that have an L2 table, ascending.
    let l2Indexes: [UInt64]
    public let totalClusters: UInt64

    var l1Offset: UInt64 { Self.clusterSize }
    var refcountTableOffset: UInt64 { l1Offset + l1Clusters * Self.clusterSize }
    var refcountBlocksOffset: UInt64 { refcountTableOffset + refcountTableClusters * Self.clusterSize }
    var l2Offset: UInt64 { refcountBlocksOffset + refcountBlocks * Self.clusterSize }
    var dataOffset: UInt64 { l2Offset + UInt64(l2Indexes.count) * Self.clusterSize }

    public init(virtualSize: UInt64, allocated: [UInt64]) {
        precondition(zip(allocated, allocated.dropFirst()).allSatisfy { $0 < $1 }, "allocated clusters must ascend")
        self.virtualSize = virtualSize
        self.allocated = allocated
        let cs = Self.clusterSize
        let guestClusters = (virtualSize + cs - 1) / cs
        l1Size = max(1, (guestClusters + Self.entriesPerTable - 1) / Self.entriesPerTable)
        l1Clusters = (l1Size * 8 + cs - 1) / cs
        var l2: [UInt64] = []
        for cluster in allocated where l2.last != cluster / Self.entriesPerTable { l2.append(cluster / Self.entriesPerTable) }
        l2Indexes = l2
        // Refcount blocks cover every cluster, themselves and the table included: iterate.
        var blocks: UInt64 = 1, table: UInt64 = 1
        while true {
            let total = 1 + l1Clusters + table + blocks + UInt64(l2.count) + UInt64(allocated.count)
            let needBlocks = (total + Self.refcountsPerBlock - 1) / Self.refcountsPerBlock
            let needTable = (needBlocks * 8 + cs - 1) / cs
            if needBlocks == blocks && needTable == table { break }
            blocks = needBlocks
            table = needTable
        }
        refcountBlocks = blocks
        refcountTableClusters = table
        totalClusters = 1 + l1Clusters + table + blocks + UInt64(l2.count) + UInt64(allocated.count)
    }

    /// Where guest cluster `cluster`'s data lies in the file (nil: unallocated).
    public func hostOffset(ofCluster cluster: UInt64) -> UInt64? {
        var low = 0, high = allocated.count
        while low < high {
            let mid = (low + high) / 2
            if allocated[mid] < cluster { low = mid + 1 } else { high = mid }
        }
        guard low < allocated.count, allocated[low] == cluster else { return nil }
        return dataOffset + UInt64(low) * Self.clusterSize
    }

    /// Writes header, L1, refcount table and blocks and L2 tables, and sizes the file; the
    /// data clusters are written by the caller at `hostOffset`.
    public func writeMetadata(to file: OpenFile) throws {
        let cs = Self.clusterSize
        try file.truncate(to: totalClusters * cs)
        var header: [UInt8] = []
        func put32(_ v: UInt32) { header += withUnsafeBytes(of: v.bigEndian) { Array($0) } }
        func put64(_ v: UInt64) { header += withUnsafeBytes(of: v.bigEndian) { Array($0) } }
        put32(Qcow2Header.magic); put32(3)
        put64(0); put32(0)  // no backing file
        put32(UInt32(Self.clusterBits))
        put64(virtualSize)
        put32(0)  // no encryption
        put32(UInt32(l1Size)); put64(l1Offset)
        put64(refcountTableOffset); put32(UInt32(refcountTableClusters))
        put32(0); put64(0)  // no snapshots
        put64(0); put64(0); put64(0)  // incompatible, compatible, autoclear features
        put32(4)  // refcount order: 16-bit refcounts
        put32(104)  // header length
        header += [UInt8](repeating: 0, count: 8)  // end of header extensions
        try file.write(header, at: 0)

        var l1 = [UInt64](repeating: 0, count: Int(l1Size))
        for (i, index) in l2Indexes.enumerated() { l1[Int(index)] = (l2Offset + UInt64(i) * cs) | Self.copied }
        try file.write(Self.bigEndian(l1), at: l1Offset)

        let table = (0..<refcountBlocks).map { refcountBlocksOffset + $0 * cs }
        try file.write(Self.bigEndian(table), at: refcountTableOffset)
        var refcounts = [UInt8](repeating: 0, count: Int(cs))
        for block in 0..<refcountBlocks {
            let first = block * Self.refcountsPerBlock
            let used = first < totalClusters ? min(Self.refcountsPerBlock, totalClusters - first) : 0
            for i in 0..<Int(Self.refcountsPerBlock) { refcounts[2 * i] = 0; refcounts[2 * i + 1] = UInt64(i) < used ? 1 : 0 }
            try file.write(refcounts, at: refcountBlocksOffset + block * cs)
        }

        var next = 0  // position in `allocated`
        for (i, index) in l2Indexes.enumerated() {
            var entries = [UInt64](repeating: 0, count: Int(Self.entriesPerTable))
            while next < allocated.count && allocated[next] / Self.entriesPerTable == index {
                entries[Int(allocated[next] % Self.entriesPerTable)] = (dataOffset + UInt64(next) * cs) | Self.copied
                next += 1
            }
            try file.write(Self.bigEndian(entries), at: l2Offset + UInt64(i) * cs)
        }
    }

    static func bigEndian(_ values: [UInt64]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(values.count * 8)
        for v in values { bytes += withUnsafeBytes(of: v.bigEndian) { Array($0) } }
        return bytes
    }
}
