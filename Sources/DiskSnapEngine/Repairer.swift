import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog

public struct RepairResult: Sendable {
    public var packsRead = 0
    /// Packs whose header, trailer or table of contents does not parse: their chunks are lost.
    public var packsUnreadable: [String] = []
    /// With `readData`: chunks whose bytes do not match their digest, left out of the index.
    public var chunksDropped = 0
    public var chunksIndexed = 0
    public var segmentsReplaced = 0
    public var gcStateRemoved = false
    /// Snapshots marked `damaged`, with what they lack.
    public var snapshotsDamaged: [(id: String, reason: String)] = []
    public var seconds: Double = 0
}

/// `check --repair`: rebuilds the chunk index from the packs' own tables of contents, then
/// marks every accomplished snapshot whose fixed index is unreadable or names a chunk the
/// rebuilt index lacks as `damaged`. Runs alone (the repository lock, exclusively).
///
/// Order: the new segment is published before the old ones are removed, so a crash leaves
/// both (valid: the same locations twice) and a second repair finishes the job.
public struct Repairer {
    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    public func repair(readData: Bool) throws -> RepairResult {
        let lock = try repository.lock(.exclusive, for: "check --repair")
        defer { withExtendedLifetime(lock) {} }
        let clock = Progress(label: "repair", total: 0, observer: nil)
        var result = RepairResult()

        // 1. Every readable pack's entries (with readData, only chunks whose bytes verify),
        //    gathered as sorted runs in a work area (bounded memory), then merged into one
        //    segment with the first copy of each digest.
        let area = try TemporaryArea(repository: repository)
        defer { area.remove() }
        let runs = SpilledRuns(area: area, expectedEntries: 1 << 20)
        let decoder = BlockDecoder(repository: repository)
        var bytes: [UInt8] = []
        for id in try repository.packIDs().sorted(by: { $0.hex < $1.hex }) {
            let toc: [PackEntry]
            do {
                toc = try PackReader.tableOfContents(repository.openPack(id), pack: id, repository: repository)
            } catch {
                result.packsUnreadable.append(id.hex)
                continue
            }
            result.packsRead += 1
            let file = try repository.openPack(id)
            var kept: [PackEntry] = []
            for e in toc.sorted(by: { ($0.offset, $0.blockOffset) < ($1.offset, $1.blockOffset) }) {
                if readData {
                    if bytes.count != Int(e.rawLength) { bytes = [UInt8](repeating: 0, count: Int(e.rawLength)) }
                    do {
                        try bytes.withUnsafeMutableBytes { try decoder.read(e, pack: id, file: file, into: $0) }
                    } catch {
                        result.chunksDropped += 1
                        continue
                    }
                }
                kept.append(e)
            }
            if !kept.isEmpty { try runs.add(pack: id, entries: kept) }
        }
        let rebuilt = area.path("rebuilt.idx")
        let merged = try runs.merge(to: rebuilt, unique: true)
        result.chunksIndexed = Int(merged.entries)
        let index = ChunkLocator(segments: merged.entries > 0 ? [try SortedSegment(path: rebuilt)] : [], excluding: [])

        // 2. The rebuilt index replaces every segment.
        let old = try repository.indexSegmentNames()
        if merged.entries > 0 { try repository.publishSegment(rebuilt) }
        try repository.removeSegments(old)
        result.segmentsReplaced = old.count
        // A gc state that does not parse would stop every writer: the next gc starts over.
        if (try? repository.gcState()) == nil && FileSystem.exists(repository.gcStatePath) {
            try repository.removeGCState()
            result.gcStateRemoved = true
        }

        // 3. Snapshots that lost something.
        let catalog = Catalog(repository: repository)
        for record in try catalog.records().records where record.status == .accomplished {
            var reason: String?
            do {
                let fixed = try FixedIndexReader(repository, record.snapshotId)
                guard fixed.header.diskSize == record.sourceSize, fixed.header.snapshotID == record.snapshotId.rawValue else {
                    throw FormatError(file: fixed.file.path, "does not match its snapshot record (size or id)")
                }
                var missing: UInt64 = 0, first: UInt64?
                try fixed.forEach { chunk, digest in
                    if try !digest.isZero && !index.contains(digest) {
                        missing += 1
                        if first == nil { first = chunk * UInt64(record.chunkSize) }
                    }
                }
                if missing > 0 { reason = "\(missing) chunks are missing (the first at offset \(first!))" }
            } catch let error as any CodedError {
                reason = "its fixed index cannot be read: \(error.message)"
            }
            guard let reason else { continue }
            var damaged = record
            damaged.status = .damaged
            damaged.failureReason = "damaged (check --repair, \(ISOTime.now())): \(reason)"
            try catalog.save(damaged)
            result.snapshotsDamaged.append((record.snapshotId.rawValue, reason))
        }
        result.seconds = clock.elapsedSeconds
        return result
    }
}
