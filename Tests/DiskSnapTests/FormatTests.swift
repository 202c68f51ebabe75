import Testing
@testable import DiskSnapFormat

@Suite struct DigestTests {
    @Test func knownAnswers() {
        #expect([UInt8]().withUnsafeBytes { ChunkDigest(hashing: $0) }.hex
                == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(Array("abc".utf8).withUnsafeBytes { ChunkDigest(hashing: $0) }.hex
                == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func hexRoundTripAndOrder() {
        let a = Array("a".utf8).withUnsafeBytes { ChunkDigest(hashing: $0) }
        #expect(ChunkDigest(hex: a.hex) == a)
        #expect(ChunkDigest(hex: "zz") == nil)
        let b = Array("b".utf8).withUnsafeBytes { ChunkDigest(hashing: $0) }
        #expect((a < b) == (a.hex < b.hex))
        #expect(ChunkDigest.zero.isZero && !a.isZero)
    }

    /// Magic numbers are the first 8 bytes of SHA-256 of a readable string.
    @Test func magicNumbers() {
        func prefix(_ s: String) -> [UInt8] {
            Array(s.utf8).withUnsafeBytes { ChunkDigest(hashing: $0) }.withBytes { Array($0.prefix(8)) }
        }
        #expect(PackFormat.magic == prefix("disksnap pack v1"))
        #expect(ChunkIndexFormat.magic == prefix("disksnap chunk index v1"))
        #expect(FixedIndexHeader.magic == prefix("disksnap fixed index v1"))
    }
}

@Suite struct FixedIndexTests {
    let header = FixedIndexHeader(diskSize: 10 * 65536 + 1, chunkSize: 65536, createdUnixSeconds: 1_700_000_000,
                                  entriesDigest: Array("x".utf8).withUnsafeBytes { ChunkDigest(hashing: $0) },
                                  snapshotID: "s-abcdefghijklmnopqrst")

    @Test func headerIs4096BytesAndRoundTrips() throws {
        let bytes = header.encode()
        #expect(bytes.count == 4096)
        #expect(try FixedIndexHeader.decode(bytes, file: "t") == header)
        #expect(header.chunkCount == 11)
        #expect(header.fileSize == 4096 + 11 * 32)
    }

    @Test func everyFlippedHeaderByteIsDetected() {
        let bytes = header.encode()
        for position in [0, 9, 17, 30, 41, 60, 90, 2000, 4095] {
            var damaged = bytes
            damaged[position] ^= 0x40
            #expect(throws: FormatError.self) { try FixedIndexHeader.decode(damaged, file: "t") }
        }
        #expect(throws: FormatError.self) { try FixedIndexHeader.decode(Array(bytes.prefix(100)), file: "t") }
    }
}

@Suite struct PackAndIndexTests {
    func digest(_ i: Int) -> ChunkDigest { Array("chunk \(i)".utf8).withUnsafeBytes { ChunkDigest(hashing: $0) } }

    @Test func packTrailerRoundTrip() throws {
        let entries = (0..<3).map { PackEntry(digest: digest($0), offset: UInt64(16 + $0 * 100), storedLength: 100, rawLength: 65536, encoding: .zstd) }
        let tocOffset: UInt64 = 316
        let (toc, trailer) = PackFormat.encodeTrailer(entries: entries, tocOffset: tocOffset)
        #expect(toc.count == 3 * PackFormat.entrySize && trailer.count == PackFormat.trailerSize)
        let fileSize = tocOffset + UInt64(toc.count + trailer.count)
        let decoded = try PackFormat.decodeTrailer(trailer, fileSize: fileSize, file: "p")
        #expect(try PackFormat.decodeTOC(toc, trailer: decoded, file: "p") == entries)
        var damaged = toc
        damaged[40] ^= 1
        #expect(throws: FormatError.self) { try PackFormat.decodeTOC(damaged, trailer: decoded, file: "p") }
        #expect(throws: FormatError.self) { try PackFormat.decodeTrailer(trailer, fileSize: fileSize + 1, file: "p") }
    }

    /// Three chunks compressed together in one block, two raw blocks of one chunk each.
    func blockEntries() -> [ChunkIndexFormat.Entry] {
        (0..<3).map { .init(digest: digest($0), pack: 0, offset: 16, storedLength: 900, rawLength: 65536, encoding: .zstd, blockOffset: UInt32($0 * 65536)) }
            + (3..<5).map { .init(digest: digest($0), pack: 1, offset: UInt64(16 + ($0 - 3) * 65536), storedLength: 65536, rawLength: 65536, encoding: .raw) }
    }

    @Test func indexSegmentRoundTripAndTamper() throws {
        let packs = [PackID.generate(), PackID.generate()]
        let segment = ChunkIndexFormat.Segment(packs: packs, entries: blockEntries())
        let bytes = ChunkIndexFormat.encode(segment)
        #expect(bytes.count == 32 + 2 * 16 + 5 * 64 + 32)
        #expect(try ChunkIndexFormat.decode(bytes, file: "i") == segment)
        for cut in [0, 10, bytes.count - 1] {
            #expect(throws: FormatError.self) { try ChunkIndexFormat.decode(Array(bytes.prefix(cut)), file: "i") }
        }
        var flipped = bytes
        flipped[100] ^= 0x80
        #expect(throws: FormatError.self) { try ChunkIndexFormat.decode(flipped, file: "i") }
    }

    /// Re-signs a segment body with its SHA-256 trailer.
    func signed(_ body: [UInt8]) -> [UInt8] { body + body.withUnsafeBytes { ChunkDigest(hashing: $0) }.withBytes { Array($0) } }

    @Test func versionOneSegmentStillReads() throws {
        // A version 1 segment: 56-byte entries, no block offset (every block holds one chunk).
        let packs = [PackID.generate()]
        let entries: [ChunkIndexFormat.Entry] = (0..<2).map {
            .init(digest: digest($0), pack: 0, offset: UInt64(16 + $0 * 500), storedLength: 500, rawLength: 65536, encoding: .zstd)
        }
        let v2 = ChunkIndexFormat.encode(.init(packs: packs, entries: entries))
        var v1 = Array(v2[0..<8]) + [1, 0, 0, 0] + Array(v2[12..<48])
        for i in 0..<2 { v1 += v2[48 + i * 64..<48 + i * 64 + 56] }
        #expect(try ChunkIndexFormat.decode(signed(v1), file: "v1") == .init(packs: packs, entries: entries))
        // A raw chunk that does not fit its block is refused.
        var bad = entries
        bad[0].encoding = .raw
        #expect(throws: FormatError.self) { try ChunkIndexFormat.decode(ChunkIndexFormat.encode(.init(packs: packs, entries: bad)), file: "i") }
    }

    @Test func packEntriesCarryTheirBlockOffset() throws {
        let entries = blockEntries().map {
            PackEntry(digest: $0.digest, offset: $0.offset, storedLength: $0.storedLength, rawLength: $0.rawLength, encoding: $0.encoding, blockOffset: $0.blockOffset)
        }
        let tocOffset: UInt64 = 16 + 2 * 65536
        let (toc, trailer) = PackFormat.encodeTrailer(entries: entries, tocOffset: tocOffset)
        let fileSize = tocOffset + UInt64(toc.count + trailer.count)
        let decoded = try PackFormat.decodeTrailer(trailer, fileSize: fileSize, file: "p")
        #expect(decoded.version == 2)
        #expect(try PackFormat.decodeTOC(toc, trailer: decoded, file: "p") == entries)
        // Version 1 packs hold one chunk per block: a block offset there is damage.
        let v1Trailer = PackFormat.Trailer(tocOffset: decoded.tocOffset, entryCount: decoded.entryCount, tocDigest: decoded.tocDigest, version: 1)
        #expect(throws: FormatError.self) { try PackFormat.decodeTOC(toc, trailer: v1Trailer, file: "p") }
    }

    @Test func packIDHex() {
        let id = PackID.generate()
        #expect(PackID(hex: id.hex) == id)
        #expect(PackID(hex: "XYZ") == nil)
        #expect(PackID(hex: id.hex.uppercased()) == nil || id.hex == id.hex.uppercased())
    }
}

@Suite struct SettingsTests {
    @Test(arguments: [("64K", 65536), ("256KiB", 262144), ("1M", 1 << 20), ("16MiB", 16 << 20), ("131072", 131072)])
    func chunkSizes(text: String, bytes: Int) throws {
        #expect(try ChunkSize(parsing: text).bytes == bytes)
    }

    @Test(arguments: ["8K", "96K", "32M", "0", "-64K", "abc", "", "64Q"])
    func badChunkSizes(text: String) {
        #expect(throws: ParameterError.self) { try ChunkSize(parsing: text) }
    }

    @Test func compression() throws {
        #expect(try Compression(parsing: "zstd:3") == .zstd(level: 3))
        #expect(try Compression(parsing: "none") == Compression.none)
        for bad in ["zstd", "zstd:0", "zstd:20", "gzip:3", "zstd:x"] {
            #expect(throws: ParameterError.self) { try Compression(parsing: bad) }
        }
    }

    @Test func snapshotIDs() {
        let id = SnapshotID.generate()
        #expect(id.rawValue.hasPrefix("s-") && id.rawValue.count == 22)
        #expect(SnapshotID(id.rawValue) == id)
        for bad in ["s-", "d-abcdefghijklmnopqrst", "s-ABCDEFGHIJKLMNOPQRST", "s-abcdefghijklmnopqrs1", "name"] {
            #expect(SnapshotID(bad) == nil)
        }
    }

    @Test func recordJSONUsesDocumentKeys() throws {
        let record = SnapshotRecord(snapshotId: .generate(), snapshotName: "n1", description: "", sourcePath: "/x",
                                    sourceKind: .file, sourceSize: 5, chunkSize: 65536)
        let text = String(decoding: RecordJSON.encode(record), as: UTF8.self)
        for key in ["\"SnapshotId\"", "\"SnapshotName\"", "\"SourceSize\"", "\"ChunkSize\"", "\"Status\"", "\"CreationTime\""] {
            #expect(text.contains(key))
        }
        #expect(try SnapshotRecord.decode(RecordJSON.encode(record), file: "r") == record)
        #expect(throws: FormatError.self) { try SnapshotRecord.decode(Array("{\"SnapshotId\": 1}".utf8), file: "r") }
    }
}
