// Feeds bytes to every decoder of a repository file. The first byte picks the decoder; the
// rest is the file. Malformed input must end in a FormatError: never a crash, a trap or a
// huge allocation.
//
//   swift build                                   -> disksnap-fuzz FILE...: replays files (the
//                                                    corpus in Tests/Fuzz/corpus; CI does)
//   tools/fuzz [SECONDS]                          -> libFuzzer with AddressSanitizer
import DiskSnapFormat
import DiskSnapSys
import DiskSnapQcow2
import DiskSnapStore
import DiskSnapAPIWire
import DiskSnapSeal
#if canImport(Glibc)
import Glibc
#endif

enum FuzzDecoders {
    static let decoders: [(String, @Sendable ([UInt8]) throws -> Void)] = [
        ("pack", decodePack),
        ("chunk index segment", { _ = try ChunkIndexFormat.decode($0, file: "fuzz.idx") }),
        ("fixed index header", { _ = try FixedIndexHeader.decode($0, file: "fuzz.fidx") }),
        ("snapshot record", { _ = try SnapshotRecord.decode($0, file: "fuzz.json") }),
        ("config", { _ = try RepositoryConfig.decode($0, file: "config.json") }),
        ("gc state", { _ = try GCState.decode($0, file: "gc.json") }),
        ("disk record", { _ = try DiskRecord.decode($0, file: "disk.json") }),
        ("qcow2 image", decodeQcow2),
        ("chunk index segment file", decodeSegmentFile),
    ]
    /// Decoders added later take selectors from 0xF0 up, so that the corpus's first bytes
    /// keep choosing the decoders they were found for.
    static let laterDecoders: [(String, @Sendable ([UInt8]) throws -> Void)] = [
        ("API request", decodeAPIRequest),
        ("key file", decodeKeyFile),
        ("sealed object", decodeSealedObject),
        ("sealed file", decodeSealedFile),
        ("sealed pack", decodeSealedPack),
        ("encrypted config", { _ = try EncryptedConfig.decode($0, file: "config.json") }),
    ]

    /// The keys the sealed decoders open with (seeds are sealed under them: `--make-seeds`).
    static let keys = MasterKeys(raw: (0..<64).map { UInt8($0) })!
    static let sealer = Sealer(keys: keys)
    static let context = Sealer.Context(kind: "object", id: "fuzz")

    /// A key file: decoded, its KDF's bounds checked, and opened when its cost is small
    /// (a file may ask for up to 1 GiB of scrypt, which is bounded, not cheap).
    static func decodeKeyFile(_ bytes: [UInt8]) throws {
        let file = try KeyFile.decode(bytes, file: "key.json")
        guard file.kdf.takesKeyFile || file.kdf.logN <= 12 && file.kdf.r <= 8 && file.kdf.p <= 2 else { return }
        let secret: KeySecret = file.kdf.takesKeyFile ? .keyFile(path: "fuzz.key", bytes: Array(repeating: 9, count: 32)) : .passphrase("fuzz")
        _ = try KeyFile.unlock([file], repositoryId: file.repositoryId, with: secret)
    }

    /// A sealed object (a record, a block): opened whole, and into a buffer.
    static func decodeSealedObject(_ bytes: [UInt8]) throws {
        _ = try sealer.open(bytes, context: context, what: "fuzz")
        var output = [UInt8](repeating: 0, count: max(0, bytes.count - Sealer.overhead))
        _ = try bytes.withUnsafeBytes { sealed in
            try output.withUnsafeMutableBytes { try sealer.open(sealed, context: context, into: $0, what: "fuzz") }
        }
    }

    /// A file sealed a page at a time (segments, fixed indexes): opened, read whole and at
    /// a page boundary, and, when it opens, read as a segment.
    static func decodeSealedFile(_ bytes: [UInt8]) throws {
        let path = "/dev/shm/disksnap-fuzz-\(getpid()).sealed"
        let file = try OpenFile(path: path, mode: [.writeOnly, .create, .truncate])
        try file.write(bytes, at: 0)
        defer { unlink(path) }
        let reader = try SealedFileReader(file: try OpenFile(path: path), sealer: sealer, context: context)
        let size = try reader.size()
        guard size <= 1 << 20 else { return }
        _ = try reader.readBytes(count: Int(size), at: 0)
        _ = try reader.readBytes(count: 100, at: 4090)
        _ = try IndexSegments.open(file: reader)
    }

    /// A sealed pack, read as `PackReader` reads one: header, trailer, sealed table opened.
    static func decodeSealedPack(_ bytes: [UInt8]) throws {
        guard bytes.count >= PackFormat.headerSize + PackFormat.trailerSize else { return }
        try PackFormat.decodeHeader(Array(bytes[..<PackFormat.headerSize]), file: "fuzz.pack")
        let trailer = try PackFormat.decodeTrailer(Array(bytes[(bytes.count - PackFormat.trailerSize)...]),
                                                   fileSize: UInt64(bytes.count), file: "fuzz.pack")
        let start = Int(trailer.tocOffset), end = start + trailer.storedTOCBytes
        _ = try PackFormat.decodeTOC(Array(bytes[start..<end]), trailer: trailer, file: "fuzz.pack") { sealed in
            try sealer.open(sealed, context: context, what: "fuzz.pack")
        }
    }

    /// Seed inputs for the sealed decoders, sealed under `keys` (their selectors first).
    static func seeds() throws -> [(String, [UInt8])] {
        let later = { (name: String) in UInt8(0xF0 + laterDecoders.firstIndex { $0.0 == name }!) }
        var out: [(String, [UInt8])] = []
        let record = Array(#"{"FormatVersion":1,"Fuzz":true}"#.utf8)
        out.append(("sealed-object", [later("sealed object")] + (try sealer.seal(record, context: context))))
        let plainPath = "/dev/shm/disksnap-fuzz-seed-\(getpid())", sealedPath = plainPath + ".sealed"
        defer { unlink(plainPath); unlink(sealedPath) }
        for (name, size) in [("sealed-file-empty", 0), ("sealed-file-2-pages", 5000)] {
            unlink(plainPath); unlink(sealedPath)
            let plain = try OpenFile(path: plainPath, mode: [.writeOnly, .create, .truncate])
            try plain.write((0..<size).map { UInt8(truncatingIfNeeded: $0) }, at: 0)
            try sealer.sealFile(plainPath, to: sealedPath, context: context)
            out.append((name, [later("sealed file")] + (try OpenFile(path: sealedPath).readBytes(count: 1 << 20, at: 0))))
        }
        let entry = PackEntry(digest: .zero, offset: 16, storedLength: 60, rawLength: 12, encoding: .raw)
        let toc = try sealer.seal(PackFormat.encodeTOC([entry]), context: context)
        let block = try sealer.seal(Array(repeating: UInt8(7), count: 12), context: context)
        let pack = PackFormat.encodeHeader(sealed: true) + block + toc
            + PackFormat.encodeTrailer(storedTOC: toc, entryCount: 1, tocOffset: UInt64(16 + block.count), sealed: true)
        out.append(("sealed-pack", [later("sealed pack")] + pack))
        var cheap = KeyFile.Derivation.standard(salt: Array(repeating: 3, count: 32))
        cheap.logN = 10
        let key = try KeyFile.make(keys: keys, secret: .passphrase("fuzz"), repositoryId: "r-fuzz", hostname: "h", username: "u", kdf: cheap)
        out.append(("key-file", [later("key file")] + RecordJSON.encode(key)))
        let envelope = EncryptedConfig(repositoryId: "r-fuzz", sealedConfig: "AAAA")
        out.append(("encrypted-config", [later("encrypted config")] + RecordJSON.encode(envelope)))
        return out
    }

    /// A request to `disksnap serve`, as its server hands it over: the bytes split at NUL into
    /// method, path, query, headers (`name:value` lines) and body; then each signature
    /// scheme's verifier and the parameter readers. Refusals are `APIError`s.
    static func decodeAPIRequest(_ bytes: [UInt8]) throws {
        let slices = bytes.split(separator: 0, maxSplits: 4, omittingEmptySubsequences: false)
        let parts = slices.map { String(decoding: $0, as: UTF8.self) }
        func part(_ i: Int) -> String { i < parts.count ? parts[i] : "" }
        let headers = part(3).split(separator: "\n").compactMap { line -> (name: String, value: String)? in
            let pair = line.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            return pair.count == 2 ? (String(pair[0]), String(pair[1])) : nil
        }
        let request = APIRequest(method: part(0), path: part(1), rawQuery: part(2), headers: headers,
                                 body: slices.count > 4 ? Array(slices[4]) : [])
        let secret: (String) -> String? = { _ in "secret" }
        var refusals = 0
        do { _ = try RequestSignature.verifyACS3(request, secret: secret) } catch { refusals += 1 }
        do { _ = try RequestSignature.verifyRPC(request, secret: secret) } catch { refusals += 1 }
        do { _ = try RequestSignature.verifyHuawei(request, secret: secret) } catch { refusals += 1 }
        let parameters = Parameters(request.parameters)
        for name in ["PageSize", "SnapshotIds", "Tag", "Force"] {
            _ = try? parameters.int(name, default: 1, range: 1...100)
            _ = try? parameters.jsonList(name)
            _ = try? parameters.tags(name)
            _ = try? parameters.bool(name)
        }
        _ = RequestSignature.parseUTC(part(2))
        _ = RequestSignature.parseBasicUTC(part(2))
        _ = FormEncoding.percentDecodePath(request.path)
        if refusals == 3 { throw FormatError(file: "request", "refused by every verifier") }
    }

    /// A whole segment file of any version, as `ChunkLocator` and `check` read it: opened,
    /// looked up (its own first digests and one it cannot hold), streamed, Bloom verified.
    static func decodeSegmentFile(_ bytes: [UInt8]) throws {
        let path = "/dev/shm/disksnap-fuzz-\(getpid()).idx"
        let file = try OpenFile(path: path, mode: [.writeOnly, .create, .truncate])
        try file.write(bytes, at: 0)
        defer { unlink(path) }
        let segment = try IndexSegments.open(path)
        var seen: [ChunkDigest] = []
        try segment.forEach { if seen.count < 4 { seen.append($0.digest) } }
        for digest in seen + [ChunkDigest.zero] where try segment.mayContain(digest) {
            _ = try segment.copies(of: digest)
        }
        try (segment as? SortedSegment)?.verifyBloom()
    }

    /// A whole qcow2 file: header, extensions, L1 and L2 tables (through `dataRanges`), and
    /// guest reads at both ends. Written to a file first (the reader takes a path); inputs
    /// whose disk exceeds 1 GiB are left out (the table walk is as long as the disk).
    static func decodeQcow2(_ bytes: [UInt8]) throws {
        guard let header = try? Qcow2Header.decode(Array(bytes.prefix(112)), fileSize: UInt64(bytes.count), file: "fuzz.qcow2"),
              header.virtualSize <= 1 << 30 else {
            _ = try Qcow2Header.decode(Array(bytes.prefix(112)), fileSize: UInt64(bytes.count), file: "fuzz.qcow2")
            return
        }
        let path = "/dev/shm/disksnap-fuzz-\(getpid()).qcow2"
        let file = try OpenFile(path: path, mode: [.writeOnly, .create, .truncate])
        try file.write(bytes, at: 0)
        defer { unlink(path) }
        let image = try Qcow2Image(path: path, allowBacking: false)
        _ = try image.dataRanges()
        var buffer = [UInt8](repeating: 0, count: 65536)
        try buffer.withUnsafeMutableBytes { raw in
            try image.read(into: raw, at: 0)
            try image.read(into: raw, at: image.virtualSize > 65536 ? image.virtualSize - 65536 : 0)
        }
    }

    /// A whole pack file, read the way `PackReader.tableOfContents` reads one.
    static func decodePack(_ bytes: [UInt8]) throws {
        guard bytes.count >= PackFormat.headerSize + PackFormat.trailerSize else { return }
        try PackFormat.decodeHeader(Array(bytes[..<PackFormat.headerSize]), file: "fuzz.pack")
        let trailer = try PackFormat.decodeTrailer(Array(bytes[(bytes.count - PackFormat.trailerSize)...]),
                                                   fileSize: UInt64(bytes.count), file: "fuzz.pack")
        let start = Int(trailer.tocOffset), end = start + trailer.entryCount * PackFormat.entrySize
        _ = try PackFormat.decodeTOC(Array(bytes[start..<end]), trailer: trailer, file: "fuzz.pack")
    }

    static func run(_ data: [UInt8]) {
        guard let selector = data.first else { return }
        let (_, decode) = selector >= 0xF0 ? laterDecoders[Int(selector - 0xF0) % laterDecoders.count] : decoders[Int(selector) % decoders.count]
        do {
            try decode(Array(data.dropFirst()))
        } catch is any CodedError {
            // The expected outcome for malformed input: a coded error naming the file.
        } catch {
            fatalError("a decoder threw \(type(of: error)), not a coded error: \(error)")
        }
    }
}

#if FUZZING
// SwiftPM links an executable's entry point as disksnap_fuzz_main; libFuzzer's driver is
// started from there (libFuzzer's own main is then not linked).
@_extern(c, "LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                     _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzDecoders.run(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

@_cdecl("disksnap_fuzz_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc, arguments = argv
    return runFuzzerDriver(&count, &arguments, fuzzOne)
}
#else
import Foundation

@main
struct Replay {
    static func main() throws {
        var files = 0
        if CommandLine.arguments.count == 3 && CommandLine.arguments[1] == "--make-seeds" {
            for (name, bytes) in try FuzzDecoders.seeds() {
                FileManager.default.createFile(atPath: CommandLine.arguments[2] + "/seed-" + name, contents: Data(bytes))
            }
            return
        }
        for path in CommandLine.arguments.dropFirst() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                FileHandle.standardError.write(Data("disksnap-fuzz: \(path) does not exist\n".utf8))
                exit(2)
            }
            let paths = isDirectory.boolValue
                ? try FileManager.default.contentsOfDirectory(atPath: path).sorted().map { path + "/" + $0 } : [path]
            for file in paths {
                FuzzDecoders.run([UInt8](try Data(contentsOf: URL(fileURLWithPath: file))))
                files += 1
            }
        }
        print("replayed \(files) inputs through \(FuzzDecoders.decoders.count + FuzzDecoders.laterDecoders.count) decoders: no crash")
    }
}
#endif
