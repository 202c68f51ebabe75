import Testing
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore

/// The version 3 (sorted) chunk index segment: lookups by the full digest only, every page
/// verified, the fanout and Bloom filter consistent, streaming merges and spilled runs.
@Suite struct IndexSegmentTests {
    let directory: String

    init() throws {
        directory = "/tmp/disksnap-unit-index-\(FileSystem.processID)-\(RandomUUID.generate())"
        try FileSystem.makeDirectories(directory)
    }

    func digest(_ i: Int) -> ChunkDigest { Array("chunk \(i)".utf8).withUnsafeBytes { ChunkDigest(hashing: $0) } }

    func entry(_ d: ChunkDigest, pack: UInt32, _ i: Int) -> ChunkIndexFormat.Entry {
        .init(digest: d, pack: pack, offset: UInt64(16 + i * 100), storedLength: 100, rawLength: 65536, encoding: .zstd)
    }

    /// Writes `entries` (sorted here) as a version 3 segment.
    func write(_ name: String, packs: [PackID], _ entries: [ChunkIndexFormat.Entry]) throws -> String {
        let path = "\(directory)/\(name)"
        let writer = try SortedSegmentWriter(path: path, packs: packs, entryCount: UInt64(entries.count))
        for e in entries.sorted(by: { $0.digest < $1.digest }) { try writer.append(e) }
        try writer.finish()
        return path
    }

    /// Both ways of probing the Bloom filter: kept in memory (small), read a block at a time.
    @Test(arguments: [SortedSegment.residentBloomBytes, 0])
    func everyDigestIsFoundAndNoOtherIs(residentBloomBytes: Int) throws {
        let packs = [PackID.generate(), PackID.generate()]
        let entries = (0..<3000).map { entry(digest($0), pack: UInt32($0 % 2), $0) }
        let path = try write("a-\(residentBloomBytes).idx", packs: packs, entries)
        let segment = try SortedSegment(path: path, residentBloomBytes: residentBloomBytes)
        #expect(segment.entryCount == 3000 && segment.packs == packs)
        #expect(segment.header.fanoutBits == SortedSegmentFormat.fanoutBits(entryCount: 3000) && segment.header.fanoutBits > 0)
        #expect(segment.rawBytes == 3000 * 65536 && segment.storedBytes == 3000 * 100)
        #expect(try FileSystem.status(path).size == segment.header.fileSize)
        for e in entries {
            #expect(try segment.mayContain(e.digest), "a Bloom filter has no false negatives")
            #expect(try segment.copies(of: e.digest) == [e])
        }
        var maybes = 0
        for i in 3000..<6000 {
            let absent = digest(i)
            if try segment.mayContain(absent) { maybes += 1 }
            #expect(try segment.copies(of: absent).isEmpty)
        }
        #expect(maybes < 120, "about 1% false positives expected, got \(maybes) of 3000")
        // The same leading 64 bits (and fanout bucket) is not the same chunk.
        for e in entries.prefix(50) {
            var bytes = e.digest.withBytes { Array($0) }
            bytes[31] ^= 1
            let twin = bytes.withUnsafeBytes { ChunkDigest(bytes: $0) }
            #expect(twin.leadingWord == e.digest.leadingWord)
            #expect(try segment.copies(of: twin).isEmpty, "a prefix match is never a match")
        }
        var streamed: [ChunkIndexFormat.Entry] = []
        try segment.forEach { streamed.append($0) }
        #expect(streamed == entries.sorted { $0.digest < $1.digest })
        try segment.verifyBloom()
    }

    @Test func anEmptyAndATinySegment() throws {
        let empty = try SortedSegment(path: try write("e.idx", packs: [], []))
        #expect(try !empty.mayContain(digest(1)) && empty.copies(of: digest(1)).isEmpty)
        let one = try SortedSegment(path: try write("o.idx", packs: [PackID.generate()], [entry(digest(7), pack: 0, 0)]))
        #expect(one.header.fanoutBits == 0)
        #expect(try one.copies(of: digest(7)).count == 1 && one.copies(of: digest(8)).isEmpty)
    }

    @Test func damageIsDetectedWhereItIsRead() throws {
        let packs = [PackID.generate()]
        let entries = (0..<500).map { entry(digest($0), pack: 0, $0) }
        let path = try write("d.idx", packs: packs, entries)
        let good = try FileSystem.readFile(path)
        let header = try SortedSegment(path: path).header
        func damaged(_ mutate: (inout [UInt8]) -> Void) throws -> String {
            var bytes = good
            mutate(&bytes)
            let p = "\(directory)/damaged-\(RandomUUID.generate()).idx"
            let file = try OpenFile(path: p, mode: [.writeOnly, .create, .exclusive])
            try file.write(bytes, at: 0)
            return p
        }
        // Header field, pack table, fanout: the open fails.
        for at in [30, Int(header.packsOffset) + 3, Int(header.fanoutOffset) + 5] {
            #expect(throws: FormatError.self) { try SortedSegment(path: try damaged { $0[at] ^= 0x10 }) }
        }
        // Truncated: the open fails.
        #expect(throws: FormatError.self) { try SortedSegment(path: try damaged { $0.removeLast(64) }) }
        // A flipped byte in an entry page: the lookups that read that page fail, and so does a stream.
        let page = Int(header.pagesOffset) + SortedSegmentFormat.pageSize  // page 1: sorted entries 63..<126
        let broken = try SortedSegment(path: try damaged { $0[page + 40] ^= 1 })
        let sorted = entries.sorted { $0.digest < $1.digest }
        #expect(throws: FormatError.self) { try broken.copies(of: sorted[70].digest) }
        #expect(throws: FormatError.self) { try broken.forEach { _ in } }
        // A flipped Bloom bit: a filter kept in memory is checked when it is read, at the first
        // probe; one probed a block at a time only by the full check (it can only cause a miss
        // or a page read).
        let flipped = try damaged { $0[Int(header.bloomOffset) + 1] ^= 0x40 }
        let kept = try SortedSegment(path: flipped)
        #expect(throws: FormatError.self) { try kept.mayContain(digest(600)) }
        #expect(throws: FormatError.self) { try kept.mayContain(digest(601)) }  // at every probe
        let bloom = try SortedSegment(path: flipped, residentBloomBytes: 0)
        _ = try bloom.mayContain(digest(600))
        #expect(throws: FormatError.self) { try bloom.verifyBloom() }
    }

    @Test func mergeKeepsOrderDropsPacksAndDeduplicates() throws {
        let p = (0..<3).map { _ in PackID.generate() }
        let a = try SortedSegment(path: try write("m1.idx", packs: [p[0]], (0..<400).map { entry(digest($0), pack: 0, $0) }))
        let b = try SortedSegment(path: try write("m2.idx", packs: [p[1], p[2]], (300..<700).map { entry(digest($0), pack: UInt32($0 % 2), $0) }))
        let all = try SegmentMerge.merge([a, b], to: "\(directory)/all.idx")
        #expect(all.entries == 800 && all.packs == 3)
        let merged = try SortedSegment(path: "\(directory)/all.idx")
        #expect(try merged.copies(of: digest(350)).count == 2, "two writers' copies are both kept")
        let unique = try SegmentMerge.merge([a, b], to: "\(directory)/unique.idx", unique: true)
        #expect(unique.entries == 700)
        #expect(try SortedSegment(path: "\(directory)/unique.idx").copies(of: digest(350)).map(\.offset) == [16 + 350 * 100])
        let kept = try SegmentMerge.merge([a, b], to: "\(directory)/kept.idx", dropping: [p[1]])
        let withoutP1 = try SortedSegment(path: "\(directory)/kept.idx")
        #expect(kept.packs == 2 && !withoutP1.packs.contains(p[1]))
        // b puts even numbers in p[1]: 600 is gone, 601 (p[2]) stays, 350 keeps only a's copy.
        #expect(try withoutP1.copies(of: digest(600)).isEmpty && withoutP1.copies(of: digest(601)).count == 1)
        #expect(try withoutP1.copies(of: digest(350)).count == 1)
        var previous = ChunkDigest.zero
        try withoutP1.forEach { e in
            #expect(!(e.digest < previous))
            previous = e.digest
        }
    }

    @Test func spilledRunsFindEverythingAndMergeOnce() throws {
        let repository = try Repository.initialize(at: "\(directory)/repo", config: RepositoryConfig(chunkSize: .default, compression: .default))
        let area = try TemporaryArea(repository: repository)
        defer { area.remove() }
        let runs = SpilledRuns(area: area, expectedEntries: 200_000)
        var spilled = 0
        let perPack = 5000, packCount = 30  // 150 000 entries: spills every 7 packs (35 000), the rest at merge
        for k in 0..<packCount {
            let entries = (0..<perPack).map { i in
                PackEntry(digest: digest(k * perPack + i), offset: UInt64(16 + i * 100), storedLength: 100, rawLength: 65536, encoding: .zstd)
            }
            try runs.add(pack: PackID.generate(), entries: entries) { spilled += $0.count }
        }
        #expect(spilled == 140_000, "entries past the memory limit are spilled (four times 7 packs of 5000)")
        for i in stride(from: 0, to: spilled, by: 997) { #expect(try runs.contains(digest(i))) }
        #expect(try !runs.contains(digest(10_000_000)))
        let result = try runs.merge(to: "\(directory)/runs.idx")
        #expect(result.entries == UInt64(perPack * packCount) && result.packs == packCount)
        let segment = try SortedSegment(path: "\(directory)/runs.idx")
        for i in stride(from: 0, to: perPack * packCount, by: 1013) { #expect(try segment.copies(of: digest(i)).count == 1) }
    }

    @Test func compactionPlanIsBoundedAndLogarithmic() {
        let none = [Bool](repeating: false, count: 8)
        #expect(CompactionPolicy.plan(sizes: [UInt64](repeating: 10, count: 8), legacy: none).isEmpty, "at the limit: nothing")
        // Nine: the two smallest merge (back to eight), and a third of no larger size joins.
        #expect(CompactionPolicy.plan(sizes: [1000, 5, 900, 7, 800, 700, 600, 500, 12], legacy: none + [false]) == [1, 3, 8])
        // A big segment is not rewritten for small ones (the equal small ones merge together).
        #expect(CompactionPolicy.plan(sizes: [1 << 22, 64, 64, 64, 64, 64, 64, 64, 64], legacy: none + [false]) == Array(1...8))
        // Legacy (version 1-2) segments are always rewritten, even alone.
        #expect(CompactionPolicy.plan(sizes: [5, 1 << 20], legacy: [false, true]) == [1])
        // Over many creates the count stays at the limit and each entry is rewritten a few times.
        var sizes: [UInt64] = [], written: UInt64 = 0
        for _ in 0..<2000 {
            sizes.append(64)
            let plan = CompactionPolicy.plan(sizes: sizes, legacy: sizes.map { _ in false })
            let merged = plan.reduce(UInt64(0)) { $0 + sizes[$1] }
            if !plan.isEmpty {
                written += merged
                sizes = sizes.indices.filter { !plan.contains($0) }.map { sizes[$0] } + [merged]
            }
            #expect(sizes.count <= CompactionPolicy.maximumSegments)
        }
        #expect(sizes.reduce(0, +) == 2000 * 64)
        #expect(written < 2000 * 64 * 12, "each entry rewritten about log(N) times, not N: \(Double(written) / (2000 * 64))")
    }

    @Test func anOldStoreIsReadThenRewrittenByCompaction() throws {
        // A repository index as an earlier disksnap left it: a version 2 segment (unsorted),
        // beside a version 3 one.
        let repository = try Repository.initialize(at: "\(directory)/old", config: RepositoryConfig(chunkSize: .default, compression: .default))
        let packs = [PackID.generate(), PackID.generate()]
        let old = (0..<700).reversed().map { entry(digest($0), pack: 0, $0) }
        try repository.publish(ChunkIndexFormat.encode(.init(packs: [packs[0]], entries: old)), to: "\(repository.indexDirectory)/a.idx")
        _ = try write("new.idx", packs: [packs[1]], (700..<900).map { entry(digest($0), pack: 0, $0) })
        try FileSystem.rename("\(directory)/new.idx", to: "\(repository.indexDirectory)/b.idx")
        let before = try ChunkLocator.open(repository)
        #expect(before.hasLegacySegments && before.entryCount == 900)
        #expect(try before.location(of: digest(5)).map { before.packs[Int($0.pack)] } == packs[0])
        #expect(try before.location(of: digest(800)).map { before.packs[Int($0.pack)] } == packs[1])
        // Below the segment limit, the legacy segment alone is rewritten.
        let result = try IndexCompactor.compact(repository)
        #expect(result.segmentsMerged == 1 && result.entries == 700)
        let after = try ChunkLocator.open(repository)
        #expect(!after.hasLegacySegments && after.segmentCount == 2 && after.entryCount == 900)
        for i in stride(from: 0, to: 900, by: 7) {
            let location = try #require(try after.location(of: digest(i)))
            #expect(after.packs[Int(location.pack)] == packs[i < 700 ? 0 : 1] && location.offset == UInt64(16 + i * 100))
        }
        #expect(try IndexCompactor.compact(repository).segmentsMerged == 0, "nothing more is due")
    }
}
