import Testing
@testable import DiskSnapSys
@testable import DiskSnapEngine
@testable import DiskSnapServe

@Suite struct DiffRangeTests {
    let table = [Partition(number: 1, start: 1 << 20, size: 4 << 20, type: "83"),
                 Partition(number: 2, start: 5 << 20, size: 2 << 20, type: "83")]

    @Test func consecutiveChunksMergeAndNamePartitions() {
        let k: UInt64 = 64 << 10
        // chunk 0 (before partition 1), chunks 16-17 (start of 1), 79-80 (across 1 and 2).
        let ranges = Differ.ranges(chunks: [0, 16, 17, 79, 80], chunkSize: k, fromSize: 8 << 20, toSize: 8 << 20, partitions: table)
        #expect(ranges.map(\.range) == [ByteRange(start: 0, end: k), ByteRange(start: 16 * k, end: 18 * k), ByteRange(start: 79 * k, end: 81 * k)])
        #expect(ranges.map(\.partitions) == [[], [1], [1, 2]])
    }

    @Test func growthAddsTheTailAndShortLastChunkIsClipped() {
        let k: UInt64 = 64 << 10
        let size = 10 * k + 1000
        let grown = Differ.ranges(chunks: [10], chunkSize: k, fromSize: size, toSize: size + 5000, partitions: [])
        #expect(grown.map(\.range) == [ByteRange(start: 10 * k, end: size + 5000)])
        let apart = Differ.ranges(chunks: [2], chunkSize: k, fromSize: 20 * k, toSize: 12 * k, partitions: [])
        #expect(apart.map(\.range) == [ByteRange(start: 2 * k, end: 3 * k), ByteRange(start: 12 * k, end: 20 * k)])
        #expect(Differ.ranges(chunks: [], chunkSize: k, fromSize: k, toSize: k, partitions: []).isEmpty)
    }
}

@Suite struct ServeDecodingTests {
    @Test func wireReaderRefusesShortMessages() throws {
        var reader = WireReader(bytes: [0, 0, 0, 5, 1, 2])
        #expect(try reader.u32() == 5)
        #expect(throws: NBDProtocolError.self) { try reader.u32() }
        #expect(try reader.u16() == 0x0102)
        #expect(reader.remaining == 0)
        var negative = WireReader(bytes: [1])
        #expect(throws: NBDProtocolError.self) { try negative.take(-1) }
    }

    @Test func bigEndianFieldsRoundTrip() throws {
        var bytes: [UInt8] = []
        bytes.put(UInt16(0xABCD))
        bytes.put(UInt32(0x0102_0304))
        bytes.put(UInt64(0x0003_e889_0455_65a9))
        var reader = WireReader(bytes: bytes)
        #expect(try reader.u16() == 0xABCD)
        #expect(try reader.u32() == 0x0102_0304)
        #expect(try reader.u64() == NBD.replyMagic)
    }

    @Test func sysfsDeviceNumbers() {
        let loop = DeviceUse.parseDeviceNumber("7:3\n")
        #expect(loop.map { (BlockDevice.major($0), BlockDevice.minor($0)) } ?? (0, 0) == (7, 3))
        #expect(DeviceUse.parseDeviceNumber("7") == nil)
        #expect(DeviceUse.parseDeviceNumber("x:1") == nil)
    }

    @Test func mountInfoUsersOfADevice() {
        let info = "36 25 7:3 / /mnt/a rw,relatime - ext4 /dev/loop3 rw\n37 25 7:4 / /mnt/b ro - ext4 /dev/loop4 ro\n"
        let users = DeviceUse.users(ofDevice: BlockDevice.makeDevice(major: 7, minor: 3), mountInfo: info)
        #expect(users.contains("mounted at /mnt/a"))
        #expect(!users.contains { $0.contains("/mnt/b") })
    }
}
