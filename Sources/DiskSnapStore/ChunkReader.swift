import Synchronization
import DiskSnapSys
import DiskSnapFormat

/// Open pack files shared by reader threads, at most `limit` at once.
public final class PackFiles: Sendable {
    private let repository: Repository
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
    private let decoder = BlockDecoder()

    public init(index: ChunkLocator, packs: PackFiles) {
        self.index = index
        self.packs = packs
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
        let file: any PackData
        do {
            file = try packs.file(location.pack)
        } catch let error as any CodedError where error.code == "IO.NotFound" || error.code == "BlobStore.NotFound" {
            throw StoreError(.chunkMissing, "pack \(pack) holding chunk \(digest) is missing")
        }
        try decoder.read(digest: digest, location: location, pack: pack, file: file, into: output)
    }

    /// The whole block at `location` (`BlockDecoder.withBlock`); a later `read` of one of its
    /// chunks finds it decoded already.
    public func withBlock<T>(at location: ChunkLocation, _ body: (_ stored: UnsafeRawBufferPointer, _ decoded: UnsafeRawBufferPointer) throws -> T) throws -> T {
        let pack = packs.packID(location.pack)
        let file: any PackData
        do {
            file = try packs.file(location.pack)
        } catch let error as any CodedError where error.code == "IO.NotFound" || error.code == "BlobStore.NotFound" {
            throw StoreError(.chunkMissing, "pack \(pack) is missing")
        }
        return try decoder.withBlock(at: location, pack: pack, file: file, body)
    }
}

/// Cuts verified chunks out of stored blocks. Keeps the last decompressed block: the chunks
/// of a block are read one after another in the common cases (a restore follows the disk
/// order the block was written in; `check` walks a pack's entries in order), so each block
/// is decompressed once. Chunks of raw blocks are read alone. One per thread.
public final class BlockDecoder {
    private let decompressor = ZstdDecompressor()
    private var stored: [UInt8] = []
    private var block: [UInt8] = []
    private var cached: (pack: PackID, offset: UInt64, length: Int)?

    public init() {}

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
            if file.eachReadIsCostly {
                // A request per chunk would cost more than the bytes: the block is read whole
                // once and its chunks cut from it, as a compressed block's are.
                if cached?.pack != pack || cached?.offset != location.offset {
                    cached = nil
                    let length = Int(location.storedLength)
                    if block.count < length { block = [UInt8](repeating: 0, count: length) }
                    let n = try block.withUnsafeMutableBytes { try file.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<length]), at: location.offset) }
                    guard n == length else { throw StoreError(.chunkCorrupt, "\(what): pack ends \(length - n) bytes early (truncated)") }
                    cached = (pack, location.offset, length)
                }
                block.withUnsafeBytes { output.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<start + count])) }
            } else {
                let n = try file.read(into: output, at: location.offset + UInt64(start))
                guard n == count else { throw StoreError(.chunkCorrupt, "\(what): pack ends \(count - n) bytes early (truncated)") }
            }
        case .zstd:
            if cached?.pack != pack || cached?.offset != location.offset {
                cached = nil
                let length = try decompressBlock(location: location, file: file, what: what)
                cached = (pack, location.offset, length)
            }
            guard let length = cached?.length, start + count <= length else {
                throw StoreError(.chunkCorrupt, "\(what): lies outside its block")
            }
            block.withUnsafeBytes { output.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<start + count])) }
        }
        guard ChunkDigest(hashing: UnsafeRawBufferPointer(output)) == digest else {
            throw StoreError(.chunkCorrupt, "\(what): content does not match its digest")
        }
    }

    /// Reads, decodes and verifies the chunk of a pack's table-of-contents entry (`check`,
    /// `check --repair` and gc walk packs by their own tables, not the chunk index).
    public func read(_ entry: PackEntry, pack: PackID, file: any PackData, into output: UnsafeMutableRawBufferPointer) throws {
        let location = ChunkLocation(pack: 0, storedLength: entry.storedLength, offset: entry.offset, rawLength: entry.rawLength,
                                     encoding: entry.encoding, blockOffset: entry.blockOffset)
        try read(digest: entry.digest, location: location, pack: pack, file: file, into: output)
    }

    /// Reads the whole block at `location` and calls `body` with its stored bytes and its
    /// decoded bytes (the same bytes for a raw block); nothing is verified here (`copy` hashes
    /// every chunk it passes on). Valid only inside `body`.
    public func withBlock<T>(at location: ChunkLocation, pack: PackID, file: any PackData,
                             _ body: (_ stored: UnsafeRawBufferPointer, _ decoded: UnsafeRawBufferPointer) throws -> T) throws -> T {
        let what = "block in pack \(pack) at offset \(location.offset)"
        switch location.encoding {
        case .zstd:
            if cached?.pack != pack || cached?.offset != location.offset {
                cached = nil
                let length = try decompressBlock(location: location, file: file, what: what)
                cached = (pack, location.offset, length)
            }
            let count = Int(location.storedLength), length = cached!.length
            return try stored.withUnsafeBytes { storedBytes in
                try block.withUnsafeBytes { decoded in
                    try body(UnsafeRawBufferPointer(rebasing: storedBytes[..<count]), UnsafeRawBufferPointer(rebasing: decoded[..<length]))
                }
            }
        case .raw:
            cached = nil  // `block` is about to hold this raw block, not a decoded one
            let count = Int(location.storedLength)
            if block.count < count { block = [UInt8](repeating: 0, count: count) }
            let n = try block.withUnsafeMutableBytes { try file.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<count]), at: location.offset) }
            guard n == count else { throw StoreError(.chunkCorrupt, "\(what): pack ends \(count - n) bytes early (truncated)") }
            if file.eachReadIsCostly { cached = (pack, location.offset, count) }
            return try block.withUnsafeBytes { raw in
                let bytes = UnsafeRawBufferPointer(rebasing: raw[..<count])
                return try body(bytes, bytes)
            }
        }
    }

    /// Reads and decompresses the block at `location` into `block`; returns its length.
    private func decompressBlock(location: ChunkLocation, file: any PackData, what: String) throws -> Int {
        let count = Int(location.storedLength)
        if stored.count < count { stored = [UInt8](repeating: 0, count: count) }
        let n = try stored.withUnsafeMutableBytes { try file.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<count]), at: location.offset) }
        guard n == count else { throw StoreError(.chunkCorrupt, "\(what): pack ends \(count - n) bytes early (truncated)") }
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
