import Synchronization
import DiskSnapSys
import DiskSnapFormat

/// Open pack files shared by reader threads, at most `limit` at once.
public final class PackFiles: Sendable {
    private let repository: Repository
    private let packs: [PackID]
    private let open = Mutex<[UInt32: OpenFile]>([:])
    private let limit: Int

    public init(repository: Repository, index: ChunkIndex, limit: Int = 256) {
        self.repository = repository
        self.packs = index.packs
        self.limit = limit
    }

    public func packID(_ ordinal: UInt32) -> PackID { packs[Int(ordinal)] }

    /// The open pack; evicting another is safe, as users hold their own reference.
    public func file(_ ordinal: UInt32) throws -> OpenFile {
        if let file = open.withLock({ $0[ordinal] }) { return file }
        let file = try OpenFile(path: repository.packPath(packs[Int(ordinal)]))
        open.withLock { table in
            if table.count >= limit, let victim = table.keys.first { table[victim] = nil }
            table[ordinal] = file
        }
        return file
    }
}

/// Reads chunks back and verifies each against its digest. One per thread.
public final class ChunkReader {
    private let index: ChunkIndex
    private let packs: PackFiles
    private let decompressor = ZstdDecompressor()
    private var stored: [UInt8] = []

    public init(index: ChunkIndex, packs: PackFiles) {
        self.index = index
        self.packs = packs
    }

    /// Fills `output` with the chunk `digest`; `output.count` must be its length.
    public func read(_ digest: ChunkDigest, into output: UnsafeMutableRawBufferPointer) throws {
        guard let location = index.location(of: digest) else {
            throw StoreError(.chunkMissing, "chunk \(digest) is not in the chunk index")
        }
        let pack = packs.packID(location.pack)
        guard Int(location.rawLength) == output.count else {
            throw StoreError(.chunkCorrupt, "chunk \(digest) in pack \(pack) is \(location.rawLength) bytes, expected \(output.count)")
        }
        let file: OpenFile
        do {
            file = try packs.file(location.pack)
        } catch let error as SystemError where error.code == "IO.NotFound" {
            throw StoreError(.chunkMissing, "pack \(pack) holding chunk \(digest) is missing")
        }
        try Self.decode(digest: digest, location: location, pack: pack, file: file, into: output,
                        stored: &stored, decompressor: decompressor)
    }

    /// Reads, decodes and verifies one chunk from an open pack.
    public static func decode(digest: ChunkDigest, location: ChunkLocation, pack: PackID, file: OpenFile,
                              into output: UnsafeMutableRawBufferPointer, stored: inout [UInt8],
                              decompressor: ZstdDecompressor) throws {
        let what = "chunk \(digest) in pack \(pack) at offset \(location.offset)"
        let count = Int(location.storedLength)
        if stored.count < count { stored = [UInt8](repeating: 0, count: count) }
        let n = try stored.withUnsafeMutableBytes { try file.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<count]), at: location.offset) }
        guard n == count else { throw StoreError(.chunkCorrupt, "\(what): pack ends \(count - n) bytes early (truncated)") }
        try stored.withUnsafeBytes { storedBytes in
            let input = UnsafeRawBufferPointer(rebasing: storedBytes[..<count])
            switch location.encoding {
            case .raw:
                guard count == output.count else { throw StoreError(.chunkCorrupt, "\(what): raw chunk has length \(count), expected \(output.count)") }
                output.copyMemory(from: input)
            case .zstd:
                let result = Result { () throws(ZstdError) in try decompressor.decompress(input, into: output) }
                if case .failure(let error) = result { throw StoreError(.chunkCorrupt, "\(what): \(error.message)") }
            }
        }
        guard ChunkDigest(hashing: UnsafeRawBufferPointer(output)) == digest else {
            throw StoreError(.chunkCorrupt, "\(what): content does not match its digest")
        }
    }
}
