import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog

public struct DiffRequest: Sendable {
    /// The older side: a snapshot id or name.
    public var from: String
    /// The newer side: a snapshot, or a disk (path, registered name or id) read live; nil is
    /// the first snapshot's disk as it is now.
    public var to: String?
    public var progress: (any ProgressObserver)?
    public var workers = Workers.defaultCount

    public init(from: String, to: String?) {
        self.from = from
        self.to = to
    }
}

/// A changed byte range: whole chunks merged, clipped at the disk's end.
public struct ChangedRange: Sendable, Equatable {
    public var range: ByteRange
    /// Numbers of the recorded partitions the range overlaps.
    public var partitions: [Int]
}

public struct DiffResult: Sendable {
    public var from: SnapshotRecord
    /// The other side: a snapshot, or the live disk at `toPath`.
    public var to: SnapshotRecord?
    public var toPath: String?
    public var fromSize: UInt64
    public var toSize: UInt64
    public var chunkSize: UInt64
    public var changedChunks: UInt64
    public var ranges: [ChangedRange]
    /// Disk bytes read (0 between two snapshots: only their indexes are read).
    public var bytesRead: UInt64
    public var seconds: Double

    public var changedBytes: UInt64 { ranges.reduce(0) { $0 + $1.range.count } }
}

/// What changed between two snapshots of a disk (from their fixed indexes alone), or
/// between a snapshot and the disk as it is now (read and hashed chunk by chunk).
public struct Differ {
    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    public func diff(_ request: DiffRequest) throws -> DiffResult {
        let lock = try repository.lock(.shared, for: "diff")
        let readers = try repository.readersLock()
        defer { withExtendedLifetime((lock, readers)) {} }
        let catalog = Catalog(repository: repository)
        let from = try OpenedSnapshot.open(request.from, in: repository)
        let started = Progress(label: "diff", total: 0, observer: nil)
        let target = request.to ?? from.record.sourcePath
        if (try? catalog.find(target)) != nil {
            let to = try OpenedSnapshot.open(target, in: repository)
            guard to.chunkSize == from.chunkSize else {
                throw EngineError(code: "InvalidParameter.ChunkSize", "snapshots \(from.record.snapshotId) and \(to.record.snapshotId) have different chunk sizes (\(from.chunkSize), \(to.chunkSize)); they cannot be compared by index", exitStatus: .invalidParameter)
            }
            let changed = try Self.changedChunks(from.fixed, to.fixed)
            return DiffResult(from: from.record, to: to.record, toPath: nil, fromSize: from.size, toSize: to.size,
                              chunkSize: from.chunkSize, changedChunks: UInt64(changed.count),
                              ranges: Self.ranges(chunks: changed, chunkSize: from.chunkSize, fromSize: from.size, toSize: to.size,
                                                  partitions: partitions(to.record.identity ?? from.record.identity)),
                              bytesRead: 0, seconds: started.elapsedSeconds)
        }
        // A live disk: a path, or a registered disk's name or id.
        var path = target
        if !FileSystem.exists(path), let disk = try DiskRegistry(repository: repository).find(target) { path = disk.path }
        guard FileSystem.exists(path) else {
            throw EngineError(code: "InvalidParameter.Target", "'\(target)' is neither a snapshot nor a disk (no such snapshot, registered disk or file)", exitStatus: .notFound)
        }
        let source = try Source.open(path, format: nil)
        let index = try ChunkLocator.open(repository)
        let compared = ByteRange(start: 0, end: min(from.size, source.size))
        let progress = Progress(label: "compare", total: compared.count, observer: request.progress)
        let work = InPlaceWork(snapshot: from, index: index, packs: PackFiles(repository: repository, index: index), file: source.file,
                               writer: nil, isBlockDevice: source.kind == .blockDevice, range: compared, progress: progress, collect: true,
                               qcow2: source.qcow2)
        try work.run(workers: request.workers)
        let changed = work.differingChunkNumbers
        return DiffResult(from: from.record, to: nil, toPath: source.path, fromSize: from.size, toSize: source.size,
                          chunkSize: from.chunkSize, changedChunks: UInt64(changed.count),
                          ranges: Self.ranges(chunks: changed, chunkSize: from.chunkSize, fromSize: from.size, toSize: source.size,
                                              partitions: partitions(from.record.identity)),
                          bytesRead: work.examined.load(ordering: .relaxed), seconds: progress.elapsedSeconds)
    }

    private func partitions(_ identity: DiskIdentity?) -> [Partition] {
        identity?.partitionTableType == nil ? [] : identity?.partitions ?? []
    }

    /// Chunk numbers whose entries differ, over the chunks both indexes have.
    static func changedChunks(_ a: FixedIndexReader, _ b: FixedIndexReader) throws -> [UInt64] {
        let common = min(a.header.chunkCount, b.header.chunkCount)
        var changed: [UInt64] = []
        var first: UInt64 = 0
        while first < common {
            let n = Int(min(UInt64(FixedIndexReader.entriesPerRead), common - first))
            let left = try a.entries(first: first, count: n), right = try b.entries(first: first, count: n)
            for i in 0..<n where left[i] != right[i] { changed.append(first + UInt64(i)) }
            first += UInt64(n)
        }
        return changed
    }

    /// Merges changed chunks into byte ranges, adds what one side has past the other's
    /// end, and names the partitions each range overlaps.
    static func ranges(chunks: [UInt64], chunkSize: UInt64, fromSize: UInt64, toSize: UInt64,
                       partitions: [Partition]) -> [ChangedRange] {
        let common = min(fromSize, toSize), size = max(fromSize, toSize)
        var merged: [ByteRange] = []
        for c in chunks {
            let start = c * chunkSize, end = min(start + chunkSize, common)
            guard start < end else { continue }
            if let last = merged.last, last.end == start {
                merged[merged.count - 1].end = end
            } else {
                merged.append(ByteRange(start: start, end: end))
            }
        }
        if size > common {
            if let last = merged.last, last.end == common {
                merged[merged.count - 1].end = size
            } else {
                merged.append(ByteRange(start: common, end: size))
            }
        }
        return merged.map { range in
            ChangedRange(range: range, partitions: partitions.filter { $0.start < range.end && range.start < $0.start + $0.size }.map(\.number))
        }
    }
}
