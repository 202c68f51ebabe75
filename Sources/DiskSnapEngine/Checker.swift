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

    public func check(readData: Bool) throws -> CheckReport {
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

        // 1. Index segments.
        var index = ChunkIndex()
        for name in try repository.indexSegmentNames() {
            let path = "\(repository.indexDirectory)/\(name)"
            do {
                index.add(try ChunkIndexFormat.decode(try FileSystem.readFile(path), file: path))
            } catch let error as any CodedError {
                report.problems.append(CheckProblem(code: error.code, message: error.message))
            }
        }
        report.chunksChecked = index.count

        // 2. Packs: each one's table of contents, and the index's entries against it.
        var tocs: [PackID: [ChunkDigest: PackEntry]] = [:]
        for id in try repository.packIDs() {
            do {
                let entries = try PackReader.tableOfContents(repository.packPath(id))
                tocs[id] = Dictionary(entries.map { ($0.digest, $0) }, uniquingKeysWith: { a, _ in a })
            } catch let error as any CodedError {
                report.problems.append(CheckProblem(code: error.code, message: error.message))
                tocs[id] = [:]
            }
        }
        report.packsChecked = tocs.count
        let indexedPacks = Set(index.packs)
        for id in tocs.keys where !indexedPacks.contains(id) {
            report.notes.append("pack \(id) is in no index segment (a create in progress, or left by an interrupted one)")
        }
        var badDigests: [ChunkDigest: String] = [:]
        for (digest, location) in index.entries {
            let pack = index.packs[Int(location.pack)]
            guard let toc = tocs[pack] else {
                badDigests[digest] = "pack \(pack) holding chunk \(digest) is missing"
                continue
            }
            guard let entry = toc[digest] else {
                if !toc.isEmpty { badDigests[digest] = "chunk \(digest) is not in pack \(pack) where the index puts it" }
                else { badDigests[digest] = "chunk \(digest) is in unreadable pack \(pack)" }
                continue
            }
            if entry.offset != location.offset || entry.storedLength != location.storedLength || entry.blockOffset != location.blockOffset {
                badDigests[digest] = "chunk \(digest): index and pack \(pack) disagree on its place"
            }
        }

        // 3. With readData: every chunk's bytes, by its digest.
        if readData {
            let decoder = BlockDecoder()
            var output: [UInt8] = []
            for (id, toc) in tocs where !toc.isEmpty {
                let file = try OpenFile(path: repository.packPath(id))
                // In pack order: each block is read and decompressed once.
                for entry in toc.values.sorted(by: { ($0.offset, $0.blockOffset) < ($1.offset, $1.blockOffset) }) {
                    let digest = entry.digest
                    output = [UInt8](repeating: 0, count: Int(entry.rawLength))
                    do {
                        try output.withUnsafeMutableBytes { try decoder.read(entry, pack: id, file: file, into: $0) }
                        report.chunksVerified += 1
                    } catch let error as any CodedError {
                        if index.location(of: digest).map({ index.packs[Int($0.pack)] == id }) ?? true {
                            badDigests[digest] = error.message
                        } else {
                            report.problems.append(CheckProblem(code: error.code, message: error.message + " (a duplicate; the index uses another copy)"))
                        }
                    }
                }
            }
        }

        // 4. Snapshots: records, fixed indexes, and every chunk they name.
        let catalog = Catalog(repository: repository)
        var affected: [ChunkDigest: Set<String>] = [:]
        for name in try FileSystem.listDirectory(repository.snapshotsDirectory) where name.hasSuffix(".json") {
            let path = "\(repository.snapshotsDirectory)/\(name)"
            let record: SnapshotRecord
            do {
                record = try SnapshotRecord.decode(try FileSystem.readFile(path), file: path)
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
            do {
                let fixed = try FixedIndexReader(path: repository.fixedIndexPath(record.snapshotId))
                guard fixed.header.diskSize == record.sourceSize, fixed.header.snapshotID == record.snapshotId.rawValue else {
                    throw FormatError(file: fixed.file.path, "does not match its snapshot record (size or id)")
                }
                var missing = 0
                try fixed.forEach { chunk, digest in
                    guard !digest.isZero else { return }
                    if !index.contains(digest) {
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
            } catch let error as any CodedError {
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
}

/// Reads a pack's table of contents, checking header, trailer and checksum.
public enum PackReader {
    public static func tableOfContents(_ path: String) throws -> [PackEntry] {
        let file = try OpenFile(path: path)
        let size = try file.status().size
        guard size >= UInt64(PackFormat.headerSize + PackFormat.trailerSize), size <= PackFormat.maximumSize else {
            throw FormatError(file: path, "is \(size) bytes: too short or too long for a pack (truncated?)")
        }
        try PackFormat.decodeHeader(try file.readBytes(count: PackFormat.headerSize, at: 0), file: path)
        let trailer = try PackFormat.decodeTrailer(try file.readBytes(count: PackFormat.trailerSize, at: size - UInt64(PackFormat.trailerSize)),
                                                   fileSize: size, file: path)
        let toc = try file.readBytes(count: trailer.entryCount * PackFormat.entrySize, at: trailer.tocOffset)
        return try PackFormat.decodeTOC(toc, trailer: trailer, file: path)
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

    public static func gather(_ repository: Repository) throws -> RepositoryStats {
        let index = try ChunkIndex.load(from: repository)
        let records = try Catalog(repository: repository).records().records
        let packs = try repository.packIDs()
        let packBytes = try packs.reduce(UInt64(0)) { $0 + (try FileSystem.status(repository.packPath($1)).size) }
        return RepositoryStats(repository: repository.root, chunkSize: repository.config.chunkSize.bytes,
                               compression: repository.config.compression.description,
                               profile: repository.config.profile ?? "ecs", maxSnapshots: repository.config.maxSnapshots,
                               diskCount: try DiskRegistry(repository: repository).disks().count, chunkCount: index.count,
                               storedBytes: index.storedBytes, rawBytes: index.rawBytes, packCount: packs.count,
                               packBytes: packBytes, snapshotCount: records.count,
                               logicalBytes: records.reduce(0) { $0 + $1.sourceSize })
    }
}
