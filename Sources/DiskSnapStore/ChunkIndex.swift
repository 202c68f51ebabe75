#if canImport(Glibc)
import Glibc
#endif
import DiskSnapSys
import DiskSnapFormat

/// Where one stored chunk lies: the block holding it (pack, offset, stored length,
/// encoding) and its place in the decoded block.
public struct ChunkLocation: Sendable, Equatable {
    /// Position in `ChunkIndex.packs`.
    public var pack: UInt32
    public var storedLength: UInt32
    public var offset: UInt64
    public var rawLength: UInt32
    public var encoding: ChunkEncoding
    public var blockOffset: UInt32

    public init(pack: UInt32, storedLength: UInt32, offset: UInt64, rawLength: UInt32, encoding: ChunkEncoding, blockOffset: UInt32 = 0) {
        self.pack = pack
        self.storedLength = storedLength
        self.offset = offset
        self.rawLength = rawLength
        self.encoding = encoding
        self.blockOffset = blockOffset
    }
}

/// The chunk index in memory: digest -> location, from every segment under `index/`.
/// Immutable while a command runs; a writer's new chunks are published as a new segment.
public struct ChunkIndex: Sendable {
    public private(set) var packs: [PackID] = []
    private var packOrdinals: [PackID: UInt32] = [:]
    private var locations: [ChunkDigest: ChunkLocation] = [:]
    public private(set) var storedBytes: UInt64 = 0
    public private(set) var rawBytes: UInt64 = 0

    public init() {}

    /// Loads every segment. A segment that does not parse fails the load: the caller
    /// (`check`) reports it, others refuse to write on top of a damaged index.
    ///
    /// A writer passes the packs a pending garbage collection condemned as `excluding`: their
    /// chunks are invisible to it, so it stores its own copies instead of relying on chunks
    /// that may be removed under it (docs/DESIGN.md, "Garbage collection").
    ///
    /// gc replaces segments while writers run (it publishes the replacement before it removes
    /// the old one): a segment that vanishes between the listing and the read means the
    /// listing is stale, and the load starts over from a new one.
    public static func load(from repository: Repository, excluding: Set<PackID> = []) throws -> ChunkIndex {
        var attempt = 0
        while true {
            var index = ChunkIndex()
            do {
                for name in try repository.indexSegmentNames() {
                    let path = "\(repository.indexDirectory)/\(name)"
                    index.add(try ChunkIndexFormat.decode(try FileSystem.readFile(path), file: path), excluding: excluding)
                }
                return index
            } catch let error as SystemError where error.errno == ENOENT && attempt < 10 {
                attempt += 1
            }
        }
    }

    public mutating func add(_ segment: ChunkIndexFormat.Segment, excluding: Set<PackID> = []) {
        let ordinals = segment.packs.map { ordinal(of: $0) }
        var lastBlock: (pack: UInt32, offset: UInt64)?
        for e in segment.entries where locations[e.digest] == nil && (excluding.isEmpty || !excluding.contains(segment.packs[Int(e.pack)])) {
            locations[e.digest] = ChunkLocation(pack: ordinals[Int(e.pack)], storedLength: e.storedLength,
                                                offset: e.offset, rawLength: e.rawLength, encoding: e.encoding,
                                                blockOffset: e.blockOffset)
            // The chunks of one block are consecutive entries: count its bytes once.
            if lastBlock?.pack != e.pack || lastBlock?.offset != e.offset { storedBytes += UInt64(e.storedLength) }
            lastBlock = (e.pack, e.offset)
            rawBytes += UInt64(e.rawLength)
        }
    }

    private mutating func ordinal(of pack: PackID) -> UInt32 {
        if let known = packOrdinals[pack] { return known }
        let ordinal = UInt32(packs.count)
        packs.append(pack)
        packOrdinals[pack] = ordinal
        return ordinal
    }

    public func location(of digest: ChunkDigest) -> ChunkLocation? { locations[digest] }
    public func contains(_ digest: ChunkDigest) -> Bool { locations[digest] != nil }
    public var count: Int { locations.count }

    /// Every (digest, location), for `check`.
    public var entries: Dictionary<ChunkDigest, ChunkLocation> { locations }
}
