import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog

/// One thing `check` found wrong, with the file it concerns and the snapshots it breaks.
public struct CheckProblem: Sendable, Codable, Equatable {
    public var code: String
    public var message: String
    public var affectedSnapshots: [String] = []
}

public struct CheckReport: Sendable, Codable {
    public var problems: [CheckProblem] = []
    /// Facts that are not errors: packs not yet indexed (a create running, or left by a crash).
    public var notes: [String] = []
    public var packsChecked = 0
    public var chunksChecked = 0
    public var snapshotsChecked = 0
    public var chunksVerified = 0
    public var isClean: Bool { problems.isEmpty }
}

/// Verifies a repository: structure always; with `readData`, every stored chunk's bytes.
public struct Checker {
    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    /// With `readDataOf`, `--read-data` reads only the packs holding that snapshot's chunks.
    public func check(readData: Bool, readDataOf snapshot: String? = nil) throws -> CheckReport {
        let lock = try repository.lock(.shared, for: "check")
        let readers = try repository.readersLock()
        defer { withExtendedLifetime((lock, readers)) {} }
        var report = CheckReport()

        // 0. A pending gc's state must parse: writers read it before they deduplicate.
        do {
            if let state = try repository.gcState() {
                report.notes.append("gc generation \(state.generation) has condemned \(state.condemnedPacks.count) packs, not yet removed (run gc)")
            }
        } catch let error as any CodedError {
            report.problems.append(CheckProblem(code: error.code, message: error.message))
        }
        // Every disk record must parse (and, encrypted, authenticate): creates and the API read them.
        for name in try repository.diskFileNames() {
            let path = "\(repository.disksDirectory)/\(name)"
            do {
                _ = try DiskRecord.decode(try repository.readObject(path), file: path)
            } catch let error as any CodedError {
                report.problems.append(CheckProblem(code: error.code, message: error.message))
            }
        }

        // 1. Index segments, each read through once (pages, order, fanout, Bloom filter),
        //    with the count and sum of places of the entries that name each pack. Memory: one
        //    batch of pages and a `PlaceSum` per pack.
        var segments: [any IndexSegment] = []
        var named: [PackID: PlaceSum] = [:]
        for name in try repository.indexSegmentNames().sorted() {
            let path = repository.segmentPath(name)
            do {
                let segment = try IndexSegments.open(file: repository.openSegment(name))
                var sums = [PlaceSum](repeating: PlaceSum(), count: segment.packs.count)
                try segment.forEach { e in sums[Int(e.pack)].add(e.digest, e.offset, e.storedLength, e.blockOffset) }
                try (segment as? SortedSegment)?.verifyBloom()
                for (i, pack) in segment.packs.enumerated() { named[pack, default: PlaceSum()].add(sums[i]) }
                segments.append(segment)
            } catch let error as any CodedError {
                report.problems.append(CheckProblem(code: error.code, message: error.message))
            }
        }
        let index = ChunkLocator(segments: segments, excluding: [])
        report.chunksChecked = Int(index.entryCount)

        // 2. Packs, one table of contents at a time: every index entry naming a pack must be
        //    one of its entries at the same place. When the index's entries for a pack and the
        //    pack's own entries have the same count and sum of places (the common case: every
        //    chunk of the pack indexed once), they are the same. Otherwise each TOC entry's
        //    digest is looked up and the matches are counted; only a pack whose count still
        //    differs is searched entry by entry, to name what is wrong.
        var badDigests: [ChunkDigest: String] = [:]
        let packIDs = try repository.packIDs().sorted { $0.hex < $1.hex }
        var readable: [PackID] = []
        // Packs whose index entries do not all match: their tables of contents (nil: the pack
        // is missing or unreadable), searched entry by entry in one pass at the end.
        var suspects: [PackID: [PackEntry]?] = [:]
        for id in packIDs {
            let toc: [PackEntry]
            do {
                toc = try PackReader.tableOfContents(repository.openPack(id), pack: id, repository: repository)
            } catch let error as any CodedError {
                report.problems.append(CheckProblem(code: error.code, message: error.message))
                if named[id] != nil { suspects[id] = .some(nil) }
                continue
            }
            readable.append(id)
            guard let expected = named[id] else {
                report.notes.append("pack \(id) is in no index segment (a create in progress, or left by an interrupted one)")
                continue
            }
            var own = PlaceSum()
            for t in toc { own.add(t.digest, t.offset, t.storedLength, t.blockOffset) }
            if own == expected { continue }
            var matched: UInt64 = 0
            for t in toc {
                for copy in try index.copies(of: t.digest) where copy.pack == id && Self.samePlace(copy.entry, t) { matched += 1 }
            }
            if matched != expected.count { suspects[id] = toc }
        }
        report.packsChecked = packIDs.count
        let present = Set(packIDs)
        for (id, _) in named where !present.contains(id) { suspects[id] = .some(nil) }
        if !suspects.isEmpty { try misplaced(suspects, index: index, into: &badDigests) }

        // 3. With readData: every chunk's bytes, by its digest, a pack at a time in pack order.
        if readData {
            var only: Set<PackID>?
            if let snapshot { only = try packsHolding(snapshot, index: index) }
            let decoder = BlockDecoder(repository: repository)
            var output: [UInt8] = []
            for id in readable where only?.contains(id) ?? true {
                let file = try repository.openPack(id)
                let toc = try PackReader.tableOfContents(file, pack: id, repository: repository)
                // In pack order: each block is read and decompressed once.
                for entry in toc.sorted(by: { ($0.offset, $0.blockOffset) < ($1.offset, $1.blockOffset) }) {
                    let digest = entry.digest
                    if output.count != Int(entry.rawLength) { output = [UInt8](repeating: 0, count: Int(entry.rawLength)) }
                    do {
                        try output.withUnsafeMutableBytes { try decoder.read(entry, pack: id, file: file, into: $0) }
                        report.chunksVerified += 1
                    } catch let error as any CodedError {
                        if try index.location(of: digest).map({ index.packs[Int($0.pack)] == id }) ?? true {
                            badDigests[digest] = error.message
                        } else {
                            report.problems.append(CheckProblem(code: error.code, message: error.message + " (a duplicate; the index uses another copy)"))
                        }
                    }
                }
            }
        }

        // 4. Snapshots: records, fixed indexes, and every chunk they name. A disk's snapshots
        //    are checked oldest first: a chunk equal to the one at the same position in the
        //    disk's previous snapshot, every chunk of which was found, needs no lookup (most of
        //    an incremental; the index does not change while check holds the readers lock).
        let catalog = Catalog(repository: repository)
        var affected: [ChunkDigest: Set<String>] = [:]
        var accomplished: [SnapshotRecord] = []
        for name in try FileSystem.listDirectory(repository.snapshotsDirectory) where name.hasSuffix(".json") {
            let path = "\(repository.snapshotsDirectory)/\(name)"
            let record: SnapshotRecord
            do {
                record = try SnapshotRecord.decode(try repository.readObject(path), file: path)
            } catch let error as any CodedError {
                report.problems.append(CheckProblem(code: error.code, message: error.message, affectedSnapshots: [String(name.dropLast(5))]))
                continue
            }
            report.snapshotsChecked += 1
            if record.status == .damaged {
                report.problems.append(CheckProblem(code: "Snapshot.Damaged", message: "snapshot \(record.snapshotId) is \(record.failureReason ?? "damaged"); delete it, or read what remains with mount",
                                                    affectedSnapshots: [record.snapshotId.rawValue]))
                continue
            }
            guard (try? catalog.record(record.snapshotId))?.status == .accomplished else { continue }
            accomplished.append(record)
        }
        accomplished.sort { ($0.sourceDiskId?.rawValue ?? "", $0.creationTime, $0.snapshotId.rawValue) < ($1.sourceDiskId?.rawValue ?? "", $1.creationTime, $1.snapshotId.rawValue) }
        var reference: (record: SnapshotRecord, fixed: FixedIndexReader)?
        for record in accomplished {
            do {
                let fixed = try FixedIndexReader(repository, record.snapshotId)
                guard fixed.header.diskSize == record.sourceSize, fixed.header.snapshotID == record.snapshotId.rawValue else {
                    throw FormatError(file: fixed.file.path, "does not match its snapshot record (size or id)")
                }
                let previous = reference.flatMap { $0.record.sourceDiskId == record.sourceDiskId && $0.record.chunkSize == record.chunkSize ? $0.fixed : nil }
                reference = nil
                var window = PositionWindow(previous)
                var missing = 0
                try fixed.forEach { chunk, digest in
                    guard !digest.isZero else { return }
                    if try window.digest(at: chunk) != digest, try !index.contains(digest) {
                        if missing < 10 {
                            report.problems.append(CheckProblem(code: "Chunk.Missing",
                                message: "snapshot \(record.snapshotId): chunk at offset \(chunk * UInt64(record.chunkSize)) (\(digest)) is not in the chunk index",
                                affectedSnapshots: [record.snapshotId.rawValue]))
                        }
                        missing += 1
                    } else if badDigests[digest] != nil {
                        affected[digest, default: []].insert("\(record.snapshotId.rawValue)@\(chunk * UInt64(record.chunkSize))")
                    }
                }
                if missing > 10 {
                    report.problems.append(CheckProblem(code: "Chunk.Missing", message: "snapshot \(record.snapshotId): \(missing - 10) more chunks are missing",
                                                        affectedSnapshots: [record.snapshotId.rawValue]))
                }
                if missing == 0 { reference = (record, fixed) }
            } catch let error as any CodedError {
                reference = nil
                report.problems.append(CheckProblem(code: error.code, message: error.message, affectedSnapshots: [record.snapshotId.rawValue]))
            }
        }
        for (digest, message) in badDigests.sorted(by: { $0.key < $1.key }) {
            let users = (affected[digest] ?? []).sorted()
            let placed = users.isEmpty ? "" : " (used by snapshot at offset: \(users.joined(separator: ", ")))"
            report.problems.append(CheckProblem(code: "Chunk.Corrupt", message: message + placed,
                                                affectedSnapshots: Array(Set(users.map { String($0.prefix(while: { $0 != "@" })) })).sorted()))
        }
        return report
    }
    /// Names every index entry of a suspect pack that its table of contents (nil: the pack
    /// is missing or unreadable) does not hold at the same place. One pass over the segments.
    private func misplaced(_ suspects: [PackID: [PackEntry]?], index: ChunkLocator, into bad: inout [ChunkDigest: String]) throws {
        var tocs: [PackID: [ChunkDigest: [PackEntry]]] = [:]
        for case let (id, toc?) in suspects { tocs[id] = Dictionary(grouping: toc, by: \.digest) }
        try index.forEachEntry { id, e in
            guard suspects[id] != nil else { return }
            guard let toc = tocs[id] else {
                bad[e.digest] = try repository.packSize(id) != nil ? "chunk \(e.digest) is in unreadable pack \(id)" : "pack \(id) holding chunk \(e.digest) is missing"
                return
            }
            if let candidates = toc[e.digest] {
                if !candidates.contains(where: { Self.samePlace(e, $0) }) {
                    bad[e.digest] = "chunk \(e.digest): index and pack \(id) disagree on its place"
                }
            } else {
                bad[e.digest] = "chunk \(e.digest) is not in pack \(id) where the index puts it"
            }
        }
    }

    /// An index entry and a pack's table-of-contents entry put the chunk at the same place.
    static func samePlace(_ e: ChunkIndexFormat.Entry, _ t: PackEntry) -> Bool {
        e.offset == t.offset && e.storedLength == t.storedLength && e.blockOffset == t.blockOffset
    }

    /// The packs that hold the chunks of `snapshot` (by the index's first copy).
    private func packsHolding(_ snapshot: String, index: ChunkLocator) throws -> Set<PackID> {
        let record = try Catalog(repository: repository).find(snapshot)
        let fixed = try FixedIndexReader(repository, record.snapshotId)
        var packs = Set<PackID>()
        try fixed.forEach { _, digest in
            guard !digest.isZero, let location = try index.location(of: digest) else { return }
            packs.insert(index.packs[Int(location.pack)])
        }
        return packs
    }
}


/// Reads a pack's table of contents, checking header, trailer and checksum.
public enum PackReader {
    /// `pack`'s table: sealed in an encrypted repository (opened with `repository`'s key, a
    /// table that does not authenticate being `Repository.Corrupt`).
    public static func tableOfContents(_ file: any PackData, pack: PackID, repository: Repository) throws -> [PackEntry] {
        try tableOfContents(file, open: repository.sealer.map { sealer in
            { sealed in try sealer.open(sealed, context: Repository.tocContext(pack), what: "\(file.name): table of contents") }
        })
    }

    public static func tableOfContents(_ file: any PackData, open: (([UInt8]) throws -> [UInt8])? = nil) throws -> [PackEntry] {
        let path = file.name
        let size = try file.size()
        guard size >= UInt64(PackFormat.headerSize + PackFormat.trailerSize), size <= PackFormat.maximumSize else {
            throw FormatError(file: path, "is \(size) bytes: too short or too long for a pack (truncated?)")
        }
        try PackFormat.decodeHeader(try file.readBytes(count: PackFormat.headerSize, at: 0), file: path)
        let trailer = try PackFormat.decodeTrailer(try file.readBytes(count: PackFormat.trailerSize, at: size - UInt64(PackFormat.trailerSize)),
                                                   fileSize: size, file: path)
        let toc = try file.readBytes(count: trailer.storedTOCBytes, at: trailer.tocOffset)
        return try PackFormat.decodeTOC(toc, trailer: trailer, file: path, open: open)
    }
}

/// What `stats` prints.
public struct RepositoryStats: Sendable, Codable {
    public var repository: String
    public var chunkSize: Int
    public var compression: String
    /// Rule profile (docs/RULES.md) and repository-wide snapshot cap.
    public var profile: String
    public var maxSnapshots: Int?
    public var diskCount: Int
    public var chunkCount: Int
    /// Compressed bytes of all indexed chunks.
    public var storedBytes: UInt64
    /// Uncompressed bytes of all indexed chunks.
    public var rawBytes: UInt64
    public var packCount: Int
    /// Bytes of pack files on disk (chunks, tables of contents, duplicates).
    public var packBytes: UInt64
    public var snapshotCount: Int
    /// Bytes of all snapshots' disks, as restored.
    public var logicalBytes: UInt64

    /// From the segments' headers (and the records): no entry is read, except of a version 1-2
    /// segment not compacted yet.
    public static func gather(_ repository: Repository) throws -> RepositoryStats {
        let index = try ChunkLocator.open(repository)
        let records = try Catalog(repository: repository).records().records
        let packs = try repository.packIDs()
        let packBytes = try packs.reduce(UInt64(0)) { $0 + (try repository.packSize($1) ?? 0) }
        return RepositoryStats(repository: repository.root, chunkSize: repository.config.chunkSize.bytes,
                               compression: repository.config.compression.description,
                               profile: repository.config.profile ?? "ecs", maxSnapshots: repository.config.maxSnapshots,
                               diskCount: try DiskRegistry(repository: repository).disks().count, chunkCount: Int(index.entryCount),
                               storedBytes: index.storedBytes, rawBytes: index.rawBytes, packCount: packs.count,
                               packBytes: packBytes, snapshotCount: records.count,
                               logicalBytes: records.reduce(0) { $0 + $1.sourceSize })
    }
}

/// The entries of a fixed index read forward in batches, by chunk number (nil past its end or
/// without an index): the previous snapshot beside the one being checked.
struct PositionWindow {
    private let fixed: FixedIndexReader?
    private var first: UInt64 = 0
    private var batch: [ChunkDigest] = []

    init(_ fixed: FixedIndexReader?) { self.fixed = fixed }

    mutating func digest(at chunk: UInt64) throws -> ChunkDigest? {
        guard let fixed, chunk < fixed.header.chunkCount else { return nil }
        if chunk < first || chunk >= first + UInt64(batch.count) {
            first = chunk
            batch = try fixed.entries(first: chunk, count: Int(min(UInt64(FixedIndexReader.entriesPerRead), fixed.header.chunkCount - chunk)))
        }
        return batch[Int(chunk - first)]
    }
}

/// The count and a 64-bit sum of mixed (digest, offset, stored length, block offset) of a set
/// of chunk places: equal for the index's entries of a pack and the pack's own table exactly
/// when they are the same multiset (but for a 2^-64 chance), without a lookup per entry.
struct PlaceSum: Equatable {
    var count: UInt64 = 0
    var sum: UInt64 = 0

    mutating func add(_ digest: ChunkDigest, _ offset: UInt64, _ storedLength: UInt32, _ blockOffset: UInt32) {
        var h = Self.mix(digest.leadingWord)
        h = Self.mix(h ^ digest.secondWord)
        h = Self.mix(h ^ digest.thirdWord)
        h = Self.mix(h ^ offset)
        h = Self.mix(h ^ (UInt64(storedLength) << 32 | UInt64(blockOffset)))
        count += 1
        sum &+= h
    }

    mutating func add(_ other: PlaceSum) {
        count += other.count
        sum &+= other.sum
    }

    /// splitmix64's finalizer.
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
