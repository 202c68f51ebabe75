import Testing
@testable import DiskSnapSys
@testable import DiskSnapQcow2

@Suite struct Qcow2Tests {
    func header(version: UInt32 = 3, clusterBits: UInt32 = 16, size: UInt64 = 1 << 20, incompatible: UInt64 = 0) -> [UInt8] {
        var b: [UInt8] = []
        func p32(_ v: UInt32) { b += withUnsafeBytes(of: v.bigEndian) { Array($0) } }
        func p64(_ v: UInt64) { b += withUnsafeBytes(of: v.bigEndian) { Array($0) } }
        p32(Qcow2Header.magic); p32(version); p64(0); p32(0); p32(clusterBits); p64(size); p32(0)
        p32(1); p64(1 << UInt64(clusterBits)); p64(0); p32(0); p32(0); p64(0)
        if version == 3 { p64(incompatible); p64(0); p64(0); p32(4); p32(104) }
        return b + [UInt8](repeating: 0, count: 16)
    }

    @Test func headerFieldsAreCheckedBeforeUse() throws {
        let h = try Qcow2Header.decode(header(), fileSize: 1 << 20, file: "t")
        #expect(h.clusterSize == 65536 && h.virtualSize == 1 << 20 && h.l1Size == 1)
        #expect(throws: Qcow2Error.self) { try Qcow2Header.decode(Array(header().prefix(40)), fileSize: 1 << 20, file: "t") }
        #expect(throws: Qcow2Error.self) { try Qcow2Header.decode(header(clusterBits: 22), fileSize: 1 << 30, file: "t") }
        #expect(throws: Qcow2Error.self) { try Qcow2Header.decode(header(version: 4), fileSize: 1 << 20, file: "t") }
        #expect(throws: Qcow2Error.self) { try Qcow2Header.decode(header(size: 1 << 40), fileSize: 1 << 20, file: "t") }  // L1 too small
        #expect(throws: Qcow2Error.self) { try Qcow2Header.decode(header(), fileSize: 100, file: "t") }  // L1 past the end
        do {
            _ = try Qcow2Header.decode(header(incompatible: 1 << 4), fileSize: 1 << 20, file: "t")
            Issue.record("extended L2 entries accepted")
        } catch {
            #expect(error.message.contains("extended L2 entries"))
        }
        #expect(try Qcow2Header.decode(header(incompatible: 1), fileSize: 1 << 20, file: "t").incompatibleFeatures == 1, "dirty: the caller decides")
    }

    @Test func writtenLayoutReadsBackThroughTheReader() throws {
        let cs = Qcow2Layout.clusterSize
        let size = 9000 * cs + 1234  // more than one L2 table, a partial last cluster
        let allocated: [UInt64] = [0, 1, 2, 700, 8191, 8192, 9000]
        let layout = Qcow2Layout(virtualSize: size, allocated: allocated)
        #expect(layout.hostOffset(ofCluster: 3) == nil)
        #expect(layout.hostOffset(ofCluster: 1)! == layout.hostOffset(ofCluster: 0)! + cs, "consecutive clusters are contiguous")
        let path = "/tmp/disksnap-unit-\(FileSystem.processID).qcow2"
        defer { try? FileSystem.removeIfExists(path) }
        let file = try OpenFile(path: path, mode: [.readWrite, .create, .truncate])
        try layout.writeMetadata(to: file)
        for cluster in allocated {
            let length = Int(min(cs, size - cluster * cs))
            try file.write([UInt8](repeating: UInt8(truncatingIfNeeded: cluster &+ 1), count: length), at: layout.hostOffset(ofCluster: cluster)!)
        }
        let image = try Qcow2Image(path: path)
        #expect(image.virtualSize == size)
        let ranges = try image.dataRanges()
        #expect(ranges == [ByteRange(start: 0, end: 3 * cs), ByteRange(start: 700 * cs, end: 701 * cs),
                           ByteRange(start: 8191 * cs, end: 8193 * cs), ByteRange(start: 9000 * cs, end: size)])
        var buffer = [UInt8](repeating: 0xee, count: Int(3 * cs))
        try buffer.withUnsafeMutableBytes { try image.read(into: $0, at: 699 * cs) }
        #expect(buffer[..<Int(cs)].allSatisfy { $0 == 0 } && buffer[Int(cs)..<Int(2 * cs)].allSatisfy { $0 == UInt8(701 % 256) })
        #expect(buffer[Int(2 * cs)...].allSatisfy { $0 == 0 })
        var tail = [UInt8](repeating: 0, count: 1234)
        try tail.withUnsafeMutableBytes { try image.read(into: $0, at: 9000 * cs) }
        #expect(tail.allSatisfy { $0 == UInt8(9001 % 256) })
    }
}
