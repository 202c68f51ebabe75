import Synchronization
import DiskSnapSys
import DiskSnapFormat

/// A file sealed a page at a time (docs/FORMAT.md, "Sealed files"): the index segments and
/// fixed indexes of an encrypted repository, which readers read at random offsets (a Bloom
/// block, one page of a segment) and so cannot be sealed as one object.
///
///     header  24 bytes   "DSF1" pageShift:u8 reserved[3] salt[16]
///     pages   each       ciphertext of 2^pageShift plaintext bytes (the last: 0 to 2^pageShift) + tag[16]
///
/// The file's key is HKDF-SHA-256(data key, salt, context), drawn fresh for every file, so
/// the nonce of page i can be i itself (`0:u32 || i:u64`, big-endian) without ever repeating
/// under a key. The associated data is the context, the page number and whether the page is
/// the last: a page moved, dropped or appended, a file cut at a page boundary, or a file
/// moved to another name fails to open. An empty plaintext is one empty last page.
public enum SealedFileFormat {
    public static let magic: [UInt8] = Array("DSF1".utf8)
    public static let headerSize = 24
    public static let pageShift: UInt8 = 12
    public static let pageSize = 1 << Int(pageShift)
    public static let tagSize = 16
    public static var sealedPageSize: Int { pageSize + tagSize }

    /// The plaintext size of a sealed file of `sealedSize` bytes; nil when no sealed file has that size.
    public static func plaintextSize(sealedSize: UInt64) -> UInt64? {
        guard sealedSize >= UInt64(headerSize + tagSize) else { return nil }
        let body = sealedSize - UInt64(headerSize)
        let (full, rest) = body.quotientAndRemainder(dividingBy: UInt64(sealedPageSize))
        if rest == 0 { return full * UInt64(pageSize) }
        guard rest >= UInt64(tagSize) else { return nil }
        return full * UInt64(pageSize) + rest - UInt64(tagSize)
    }

    /// Pages of a plaintext of `size` bytes (at least one).
    public static func pageCount(plaintextSize size: UInt64) -> UInt64 {
        max(1, (size + UInt64(pageSize) - 1) / UInt64(pageSize))
    }

    static func nonce(page: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 12)
        for i in 0..<8 { bytes[4 + i] = UInt8(truncatingIfNeeded: page >> (56 - 8 * UInt64(i))) }
        return bytes
    }

    static func associatedData(_ context: Sealer.Context, page: UInt64, last: Bool) -> [UInt8] {
        var bytes = context.bytes
        for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: page >> (8 * UInt64(i)))) }
        bytes.append(last ? 1 : 0)
        return bytes
    }
}

extension Sealer {
    /// Seals the plaintext file at `source` into a new file at `destination` (created
    /// exclusively, mode 0600, fsynced), a page at a time: memory does not grow with the file.
    public func sealFile(_ source: String, to destination: String, context: Context) throws {
        let input = try OpenFile(path: source)
        let size = try input.status().size
        let output = try OpenFile(path: destination, mode: [.writeOnly, .create, .exclusive], permissions: 0o600)
        let salt = Self.randomBytes(16)
        let key = subkeyBytes(salt: salt, context: context)
        try output.write(SealedFileFormat.magic + [SealedFileFormat.pageShift, 0, 0, 0] + salt, at: 0)
        let pages = SealedFileFormat.pageCount(plaintextSize: size)
        var plain = [UInt8](repeating: 0, count: SealedFileFormat.pageSize)
        // Pages are sealed into a batch and written a batch at a time: one write per 64 pages.
        var batch = [UInt8](repeating: 0, count: 64 * SealedFileFormat.sealedPageSize)
        var fill = 0
        var batchOffset = UInt64(SealedFileFormat.headerSize)
        for page in 0..<pages {
            let start = page * UInt64(SealedFileFormat.pageSize)
            let count = Int(min(UInt64(SealedFileFormat.pageSize), size - min(size, start)))
            try plain.withUnsafeMutableBytes { try input.readExactly(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<count]), at: start) }
            let aad = SealedFileFormat.associatedData(context, page: page, last: page == pages - 1)
            try key.withUnsafeBytes { key in
                try SealedFileFormat.nonce(page: page).withUnsafeBytes { nonce in
                    try aad.withUnsafeBytes { aad in
                        try plain.withUnsafeBytes { plain in
                            try batch.withUnsafeMutableBytes { out in
                                try AESGCM.seal(key: key, nonce: nonce, aad: aad, UnsafeRawBufferPointer(rebasing: plain[..<count]),
                                                into: UnsafeMutableRawBufferPointer(rebasing: out[fill..<fill + count]),
                                                tag: UnsafeMutableRawBufferPointer(rebasing: out[fill + count..<fill + count + SealedFileFormat.tagSize]))
                            }
                        }
                    }
                }
            }
            fill += count + SealedFileFormat.tagSize
            if fill == batch.count || page == pages - 1 {
                try batch.withUnsafeBytes { try output.write(UnsafeRawBufferPointer(rebasing: $0[..<fill]), at: batchOffset) }
                batchOffset += UInt64(fill)
                fill = 0
            }
        }
        try output.sync()
    }

    static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }
}

/// A sealed file read at plaintext offsets. Each page read is opened (authenticated) before
/// any byte of it is used; the last pages opened are kept (a Bloom block or a segment page is
/// often read again). Thread-safe.
public final class SealedFileReader: RandomAccessReading {
    public let path: String
    private let file: OpenFile
    /// The file's own key (`Sealer.subkeyBytes` of its salt and context).
    private let key: [UInt8]
    private let context: Sealer.Context
    private let plaintextSize: UInt64
    private let pageCount: UInt64
    private let recent = Mutex<[(page: UInt64, bytes: [UInt8])]>([])
    static let keptPages = 64

    public init(file: OpenFile, sealer: Sealer, context: Sealer.Context) throws {
        self.file = file
        path = file.path
        self.context = context
        let sealedSize = try file.status().size
        let header = try file.readBytes(count: SealedFileFormat.headerSize, at: 0)
        guard header.count == SealedFileFormat.headerSize, Array(header[0..<4]) == SealedFileFormat.magic else {
            throw SealError.corrupt("\(path): not a sealed file (no DSF1 header: damaged, or written by an unencrypted repository)")
        }
        guard header[4] == SealedFileFormat.pageShift else {
            throw SealError.corrupt("\(path): sealed with 2^\(header[4])-byte pages; this disksnap reads 2^\(SealedFileFormat.pageShift)")
        }
        guard let size = SealedFileFormat.plaintextSize(sealedSize: sealedSize) else {
            throw SealError.corrupt("\(path): \(sealedSize) bytes is no sealed file's size (truncated?)")
        }
        plaintextSize = size
        pageCount = SealedFileFormat.pageCount(plaintextSize: size)
        key = sealer.subkeyBytes(salt: Array(header[8..<24]), context: context)
        // The last page says whether the file ends where it should: opened now, so that a
        // file cut at a page boundary fails at open, not at the first read of its end.
        _ = try page(pageCount - 1)
    }

    public func size() throws -> UInt64 { plaintextSize }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        guard offset < plaintextSize, buffer.count > 0 else { return 0 }
        let end = min(plaintextSize, offset + UInt64(buffer.count))
        var position = offset
        while position < end {
            let index = position / UInt64(SealedFileFormat.pageSize)
            let bytes = try page(index)
            let from = Int(position - index * UInt64(SealedFileFormat.pageSize))
            let count = min(bytes.count - from, Int(end - position))
            bytes.withUnsafeBytes { page in
                UnsafeMutableRawBufferPointer(rebasing: buffer[Int(position - offset)..<Int(position - offset) + count])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: page[from..<from + count]))
            }
            position += UInt64(count)
        }
        return Int(end - offset)
    }

    /// Page `index`, opened.
    private func page(_ index: UInt64) throws -> [UInt8] {
        if let kept = recent.withLock({ $0.first { $0.page == index }?.bytes }) { return kept }
        let last = index == pageCount - 1
        let plainCount = last ? Int(plaintextSize - index * UInt64(SealedFileFormat.pageSize)) : SealedFileFormat.pageSize
        let sealed = try file.readBytes(count: plainCount + SealedFileFormat.tagSize,
                                        at: UInt64(SealedFileFormat.headerSize) + index * UInt64(SealedFileFormat.sealedPageSize))
        guard sealed.count == plainCount + SealedFileFormat.tagSize else {
            throw SealError.corrupt("\(path): page \(index) ends early (truncated while read)")
        }
        var opened = [UInt8](repeating: 0, count: plainCount)
        let authentic = try key.withUnsafeBytes { key in
            try SealedFileFormat.nonce(page: index).withUnsafeBytes { nonce in
                try SealedFileFormat.associatedData(context, page: index, last: last).withUnsafeBytes { aad in
                    try sealed.withUnsafeBytes { sealed in
                        try opened.withUnsafeMutableBytes { out in
                            try AESGCM.open(key: key, nonce: nonce, aad: aad, UnsafeRawBufferPointer(rebasing: sealed[..<plainCount]),
                                            tag: UnsafeRawBufferPointer(rebasing: sealed[plainCount...]), into: out)
                        }
                    }
                }
            }
        }
        guard authentic else {
            throw SealError.corrupt("\(path): page \(index) does not authenticate (changed, truncated, or sealed for another place)")
        }
        recent.withLock { kept in
            if kept.count >= Self.keptPages { kept.removeFirst() }
            kept.append((index, opened))
        }
        return opened
    }
}
