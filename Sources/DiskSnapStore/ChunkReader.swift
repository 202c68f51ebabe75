import Synchronization
import DiskSnapSys
import DiskSnapFormat
import DiskSnapSeal

/// Open pack files shared by reader threads, at most `limit` at once.
public final class PackFiles: Sendable {
    public let repository: Repository
    private let packs: [PackID]
    private let open = Mutex<[UInt32: any PackData]>([:])
    private let limit: Int

    public init(repository: Repository, index: ChunkLocator, limit: Int = 256) {
        self.repository = repository
        self.packs = index.packs
        self.limit = limit
    }

    public func packID(_ ordinal: UInt32) -> PackID { packs[Int(ordinal)] }

    /// The open pack; evicting another is safe, as users hold their own reference.
    public func file(_ ordinal: UInt32) throws -> any PackData {
        if let file = open.withLock({ $0[ordinal] }) { return file }
        let file = try repository.openPack(packs[Int(ordinal)])
        open.withLock { table in
            if table.count >= limit, let victim = table.keys.first { table[victim] = nil }
            table[ordinal] = file
        }
        return file
    }
}

/// Reads chunks back and verifies each against its digest. One per thread.
public final class ChunkReader {
    private let index: ChunkLocator
    private let packs: PackFiles
    private let decoder: BlockDecoder

    public init(index: ChunkLocator, packs: PackFiles) {
        self.index = index
        self.packs = packs
        decoder = BlockDecoder(repository: packs.repository)
    }

    /// Where `digest` is stored.
    public func locate(_ digest: ChunkDigest) throws -> ChunkLocation {
        guard let location = try index.location(of: digest) else {
            throw StoreError(.chunkMissing, "chunk \(digest) is not in the chunk index")
        }
        return location
    }

    /// Fills `output` with the chunk `digest` stored at `location` (from `locate`). Reading
    /// the chunks of one block one after another decompresses it once.
    public func read(_ digest: ChunkDigest, at location: ChunkLocation, into output: UnsafeMutableRawBufferPointer) throws {
        let pack = packs.packID(location.pack)
        guard Int(location.rawLength) == output.count else {
            throw StoreError(.chunkCorrupt, "chunk \(digest) in pack \(pack) is \(location.rawLength) bytes, expected \(output.count)")
        }
        let file = try openPack(location.pack, holding: "chunk \(digest)")
        try decoder.read(digest: digest, location: location, pack: pack, file: file, into: output)
    }

    /// The open pack; a pack that is gone is `Chunk.Missing`, naming what it held.
    private func openPack(_ ordinal: UInt32, holding what: String) throws -> any PackData {
        do {
            return try packs.file(ordinal)
        } catch let error as any CodedError where error.code == "IO.NotFound" || error.code == "BlobStore.NotFound" {
            throw StoreError(.chunkMissing, "pack \(packs.packID(ordinal)) holding \(what) is missing")
        }
    }

    /// Where each request costs a round trip (a pack in a bucket): reads the block of
    /// `ahead.first` together with the blocks after it in `ahead` (locations in store order)
    /// that lie in the same pack within `maximumGap` bytes of each other, up to
    /// `maximumSpan` bytes in all, in one ranged GET; `read` then takes them from memory.
    /// Nothing when the first block is at hand already or would be read alone.
    public func readAhead(_ ahead: some Collection<ChunkLocation>) throws {
        guard let first = ahead.first else { return }
        let pack = packs.packID(first.pack)
        guard !decoder.holds(pack, offset: first.offset, count: Int(first.storedLength)) else { return }
        let file = try openPack(first.pack, holding: "blocks to read")
        guard file.eachReadIsCostly else { return }
        var end = first.offset + UInt64(first.storedLength), blocks = 1
        for next in ahead.dropFirst() {
            guard next.pack == first.pack, next.offset >= first.offset else { break }
            let nextEnd = next.offset + UInt64(next.storedLength)
            if nextEnd <= end { continue }  // the same block (another of its chunks)
            guard next.offset <= end + Self.maximumGap, nextEnd - first.offset <= Self.maximumSpan else { break }
            end = nextEnd
            blocks += 1
        }
        guard blocks > 1 else { return }
        try decoder.fillWindow(file, pack: pack, start: first.offset, end: end)
    }

    /// Bytes between two blocks worth fetching to save a request, and the most one read-ahead
    /// holds (the body lands in the window itself: `BlobStore.read(_:range:into:)`).
    public static let maximumGap: UInt64 = 256 << 10
    public static let maximumSpan: UInt64 = 8 << 20

    /// The whole block at `location` (`BlockDecoder.withBlock`); a later `read` of one of its
    /// chunks finds it decoded already.
    public func withBlock<T>(at location: ChunkLocation, _ body: (_ stored: UnsafeRawBufferPointer, _ decoded: UnsafeRawBufferPointer) throws -> T) throws -> T {
        let pack = packs.packID(location.pack)
        let file = try openPack(location.pack, holding: "a block to copy")
        return try decoder.withBlock(at: location, pack: pack, file: file, body)
    }
}

/// Cuts verified chunks out of stored blocks. Keeps the last decompressed block: the chunks
/// of a block are read one after another in the common cases (a restore follows the disk
/// order the block was written in; `check` walks a pack's entries in order), so each block
/// is decompressed once. Chunks of raw blocks are read alone, but in a bucket (a request
/// each) or an encrypted repository (a sealed block opens whole), where the block is read
/// once and kept. One per thread.
public final class BlockDecoder {
    private let decompressor = ZstdDecompressor()
    /// An encrypted repository's key: each block is opened before it is decoded.
    private let sealer: Sealer?
    /// How chunks are named: what each chunk read is verified against.
    private let identity: ChunkIdentity
    /// The last compressed block's bytes as stored (opened when sealed), and its length.
    private var stored: [UInt8] = []
    private var storedCount = 0
    /// The last block decoded (or a raw block kept whole).
    private var block: [UInt8] = []
    private var cached: (pack: PackID, offset: UInt64, length: Int)?
    /// A sealed block as read, before it is opened.
    private var sealedScratch: [UInt8] = []

    public init(sealer: Sealer? = nil, identity: ChunkIdentity = .sha256) {
        self.sealer = sealer
        self.identity = identity
    }

    /// A decoder for `repository`'s packs: its key, its chunk names.
    public convenience init(repository: Repository) {
        self.init(sealer: repository.sealer, identity: repository.chunkIdentity)
    }

    /// Reads, decodes and verifies one chunk from an open pack.
    public func read(digest: ChunkDigest, location: ChunkLocation, pack: PackID, file: any PackData,
                     into output: UnsafeMutableRawBufferPointer) throws {
        let what = "chunk \(digest) in pack \(pack) at offset \(location.offset)"
        let start = Int(location.blockOffset), count = Int(location.rawLength)
        guard count == output.count else { throw StoreError(.chunkCorrupt, "\(what): is \(count) bytes, expected \(output.count)") }
        switch location.encoding {
        case .raw:
            guard start + count <= Int(location.storedLength) else {
                throw StoreError(.chunkCorrupt, "\(what): lies outside its \(location.storedLength)-byte block")
            }
            if file.eachReadIsCostly || sealer != nil {
                // A request per chunk would cost more than the bytes, and a sealed block opens
                // whole: the block is read whole once and its chunks cut from it, as a
                // compressed block's are.
                if cached?.pack != pack || cached?.offset != location.offset {
                    cached = nil
                    let length = try readEncoded(file, pack, location, into: &block, what: what)
                    cached = (pack, location.offset, length)
                }
                guard let length = cached?.length, start + count <= length else {
                    throw StoreError(.chunkCorrupt, "\(what): lies outside its block")
                }
                block.withUnsafeBytes { output.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<start + count])) }
            } else {
                let n = try file.read(into: output, at: location.offset + UInt64(start))
                guard n == count else { throw StoreError(.chunkCorrupt, "\(what): pack ends \(count - n) bytes early (truncated)") }
            }
        case .zstd:
            if cached?.pack != pack || cached?.offset != location.offset {
                cached = nil
                let length = try decompressBlock(location: location, pack: pack, file: file, what: what)
                cached = (pack, location.offset, length)
            }
            guard let length = cached?.length, start + count <= length else {
                throw StoreError(.chunkCorrupt, "\(what): lies outside its block")
            }
            block.withUnsafeBytes { output.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<start + count])) }
        }
        guard identity.digest(of: UnsafeRawBufferPointer(output)) == digest else {
            throw StoreError(.chunkCorrupt, "\(what): content does not match its digest")
        }
    }

    /// Stored bytes read ahead from a costly pack (`fillWindow`): blocks inside are served
    /// from here instead of a request each.
    private var window: (pack: PackID, start: UInt64, count: Int)?
    private var windowBytes: [UInt8] = []

    /// Reads `[start, end)` of `pack` into the window in one request.
    public func fillWindow(_ file: any PackData, pack: PackID, start: UInt64, end: UInt64) throws {
        let count = Int(end - start)
        window = nil
        if windowBytes.count < count { windowBytes = [UInt8](repeating: 0, count: count) }
        let n = try windowBytes.withUnsafeMutableBytes { try file.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<count]), at: start) }
        window = (pack, start, n)
    }

    /// Whether the window holds `[offset, offset + count)` of `pack`, or the block there is decoded already.
    public func holds(_ pack: PackID, offset: UInt64, count: Int) -> Bool {
        if cached?.pack == pack && cached?.offset == offset { return true }
        guard let window, window.pack == pack, offset >= window.start else { return false }
        return offset - window.start + UInt64(count) <= UInt64(window.count)
    }

    /// A block's stored bytes: from the window when it holds them, else from the pack.
    private func readStored(_ file: any PackData, _ pack: PackID, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        if let window, window.pack == pack, offset >= window.start, offset - window.start + UInt64(buffer.count) <= UInt64(window.count) {
            let from = Int(offset - window.start)
            windowBytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[from..<from + buffer.count])) }
            return buffer.count
        }
        return try file.read(into: buffer, at: offset)
    }

    /// The block at `location` as encoded (zstd or raw) into `buffer`, grown as needed: its
    /// stored bytes, opened first in an encrypted repository (a block that does not
    /// authenticate is `Chunk.Corrupt`). Returns its length.
    private func readEncoded(_ file: any PackData, _ pack: PackID, _ location: ChunkLocation, into buffer: inout [UInt8], what: String) throws -> Int {
        let count = Int(location.storedLength)
        if buffer.count < count { buffer = [UInt8](repeating: 0, count: count) }
        guard let sealer else {
            let n = try buffer.withUnsafeMutableBytes { try readStored(file, pack, into: UnsafeMutableRawBufferPointer(rebasing: $0[..<count]), at: location.offset) }
            guard n == count else { throw StoreError(.chunkCorrupt, "\(what): pack ends \(count - n) bytes early (truncated)") }
            return count
        }
        // Sealed: read into a scratch buffer kept from block to block, opened into `buffer`.
        if sealedScratch.count < count { sealedScratch = [UInt8](repeating: 0, count: count) }
        let n = try sealedScratch.withUnsafeMutableBytes { try readStored(file, pack, into: UnsafeMutableRawBufferPointer(rebasing: $0[..<count]), at: location.offset) }
        guard n == count else { throw StoreError(.chunkCorrupt, "\(what): pack ends \(count - n) bytes early (truncated)") }
        do {
            return try sealedScratch.withUnsafeBytes { sealed in
                try buffer.withUnsafeMutableBytes { output in
                    try sealer.open(UnsafeRawBufferPointer(rebasing: sealed[..<count]), context: Repository.blockContext(pack, offset: location.offset),
                                    into: output, what: what)
                }
            }
        } catch let error as SealError {
            throw StoreError(.chunkCorrupt, error.message)
        }
    }

    /// Reads, decodes and verifies the chunk of a pack's table-of-contents entry (`check`,
    /// `check --repair` and gc walk packs by their own tables, not the chunk index).
    public func read(_ entry: PackEntry, pack: PackID, file: any PackData, into output: UnsafeMutableRawBufferPointer) throws {
        let location = ChunkLocation(pack: 0, storedLength: entry.storedLength, offset: entry.offset, rawLength: entry.rawLength,
                                     encoding: entry.encoding, blockOffset: entry.blockOffset)
        try read(digest: entry.digest, location: location, pack: pack, file: file, into: output)
    }

    /// Reads the whole block at `location` and calls `body` with its bytes as encoded (opened
    /// when sealed: what a pack builder seals again for its own place) and its decoded bytes
    /// (the same bytes for a raw block); nothing is verified here (`copy` hashes every chunk
    /// it passes on). Valid only inside `body`.
    public func withBlock<T>(at location: ChunkLocation, pack: PackID, file: any PackData,
                             _ body: (_ stored: UnsafeRawBufferPointer, _ decoded: UnsafeRawBufferPointer) throws -> T) throws -> T {
        let what = "block in pack \(pack) at offset \(location.offset)"
        switch location.encoding {
        case .zstd:
            if cached?.pack != pack || cached?.offset != location.offset {
                cached = nil
                let length = try decompressBlock(location: location, pack: pack, file: file, what: what)
                cached = (pack, location.offset, length)
            }
            let count = storedCount, length = cached!.length
            return try stored.withUnsafeBytes { storedBytes in
                try block.withUnsafeBytes { decoded in
                    try body(UnsafeRawBufferPointer(rebasing: storedBytes[..<count]), UnsafeRawBufferPointer(rebasing: decoded[..<length]))
                }
            }
        case .raw:
            cached = nil  // `block` is about to hold this raw block, not a decoded one
            let count = try readEncoded(file, pack, location, into: &block, what: what)
            if file.eachReadIsCostly || sealer != nil { cached = (pack, location.offset, count) }
            return try block.withUnsafeBytes { raw in
                let bytes = UnsafeRawBufferPointer(rebasing: raw[..<count])
                return try body(bytes, bytes)
            }
        }
    }

    /// Reads (and opens) and decompresses the block at `location` into `block`; returns its length.
    private func decompressBlock(location: ChunkLocation, pack: PackID, file: any PackData, what: String) throws -> Int {
        storedCount = 0
        let count = try readEncoded(file, pack, location, into: &stored, what: what)
        storedCount = count
        return try stored.withUnsafeBytes { storedBytes in
            let input = UnsafeRawBufferPointer(rebasing: storedBytes[..<count])
            guard let size = ZstdDecompressor.contentSize(input), size <= UInt64(PackFormat.maximumBlockBytes) else {
                throw StoreError(.chunkCorrupt, "\(what): block has no valid zstd frame header")
            }
            let length = Int(size)
            if block.count < length { block = [UInt8](repeating: 0, count: length) }
            let result = block.withUnsafeMutableBytes { out in
                Result { () throws(ZstdError) in try decompressor.decompress(input, into: UnsafeMutableRawBufferPointer(rebasing: out[..<length])) }
            }
            if case .failure(let error) = result { throw StoreError(.chunkCorrupt, "\(what): \(error.message)") }
            return length
        }
    }
}
