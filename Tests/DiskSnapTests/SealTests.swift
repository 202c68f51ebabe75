import Testing
import Crypto
import Foundation
@testable import DiskSnapSeal
@testable import DiskSnapFormat
import DiskSnapSys

/// Issue 17's foundation: key files, sealing and keyed chunk ids.
@Suite struct SealTests {
    /// Cheap scrypt parameters for the tests (the standard ones take 0.1 s a run).
    static func fastKDF() -> KeyFile.Derivation {
        KeyFile.Derivation(name: "scrypt", logN: 10, r: 8, p: 1, salt: Data(repeating: 7, count: 32).base64EncodedString())
    }

    @Test func keyFileOpensWithItsPassphraseOnly() throws {
        let keys = MasterKeys.generate()
        let file = try KeyFile.make(keys: keys, passphrase: "correct horse", repositoryId: "r-1", hostname: "h", username: "u", kdf: Self.fastKDF())
        #expect(try file.open(passphrase: "correct horse") == keys)
        do {
            _ = try file.open(passphrase: "correct hors")
            Issue.record("a wrong passphrase opened the key file")
        } catch let error as SealError { #expect(error.code == "Repository.WrongKey") }
        // Moved into another repository, or with its id changed: it does not open.
        var moved = file
        moved.repositoryId = "r-2"
        #expect(throws: SealError.self) { try moved.open(passphrase: "correct horse") }
        // Round trip through its JSON, and the master keys never in it in the clear.
        let bytes = RecordJSON.encode(file)
        #expect(try KeyFile.decode(bytes, file: "k.json") == file)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(!text.contains(Data(keys.raw).base64EncodedString()))
    }

    @Test func everyBitOfAKeyFileCounts() throws {
        let file = try KeyFile.make(keys: .generate(), passphrase: "p", repositoryId: "r", hostname: "h", username: "u", kdf: Self.fastKDF())
        var sealed = Array(Data(base64Encoded: file.sealedKeys)!)
        for i in stride(from: 0, to: sealed.count, by: 7) {
            sealed[i] ^= 0x10
            var changed = file
            changed.sealedKeys = Data(sealed).base64EncodedString()
            #expect(throws: SealError.self) { try changed.open(passphrase: "p") }
            sealed[i] ^= 0x10
        }
    }

    @Test func kdfParametersOutsideTheBoundsAreRefusedBeforeRunning() throws {
        var file = try KeyFile.make(keys: .generate(), passphrase: "p", repositoryId: "r", hostname: "h", username: "u", kdf: Self.fastKDF())
        for (logN, r, p) in [(30, 8, 1), (20, 32, 16), (4, 8, 1)] {
            file.kdf.logN = logN; file.kdf.r = r; file.kdf.p = p
            do {
                _ = try file.open(passphrase: "p")
                Issue.record("KDF N=2^\(logN) r=\(r) p=\(p) was run")
            } catch let error as SealError { #expect(error.code == "Repository.Corrupt") }
        }
    }

    @Test func sealedObjectsAuthenticateTheirBytesAndTheirPlace() throws {
        let sealer = Sealer(keys: .generate())
        let plaintext = Array("a block of a disk: the marker DISKSNAP-SECRET".utf8)
        let here = Sealer.Context(kind: "pack-block", id: "p-1/0")
        let sealed = try sealer.seal(plaintext, context: here)
        #expect(sealed.count == plaintext.count + Sealer.overhead)
        #expect(try sealer.open(sealed, context: here, what: "block") == plaintext)
        #expect(!String(decoding: sealed, as: UTF8.self).contains("DISKSNAP-SECRET"))
        // Two seals of the same bytes share nothing but the header.
        #expect(try sealer.seal(plaintext, context: here)[4...] != sealed[4...])
        for i in sealed.indices {
            var flipped = sealed
            flipped[i] ^= 1
            #expect(throws: SealError.self) { try sealer.open(flipped, context: here, what: "block") }
        }
        #expect(throws: SealError.self) { try sealer.open(sealed, context: .init(kind: "pack-block", id: "p-1/1"), what: "block") }
        #expect(throws: SealError.self) { try sealer.open(Array(sealed.dropLast()), context: here, what: "block") }
        #expect(throws: SealError.self) { try Sealer(keys: .generate()).open(sealed, context: here, what: "block") }
    }

    @Test func chunkIdsAreKeyed() {
        let chunk = [UInt8](repeating: 0x5a, count: 32768)
        let one = MasterKeys.generate(), other = MasterKeys.generate()
        let plain = chunk.withUnsafeBytes { ChunkDigest(hashing: $0) }
        let keyed = chunk.withUnsafeBytes { one.chunkIdentity.digest(of: $0) }
        #expect(keyed != plain)
        #expect(keyed == chunk.withUnsafeBytes { one.chunkIdentity.digest(of: $0) })
        #expect(keyed != chunk.withUnsafeBytes { other.chunkIdentity.digest(of: $0) })
    }

    /// A file sealed a page at a time reads back at any offset, and every way of cutting,
    /// moving or changing its pages is caught.
    @Test func sealedFilesReadAtAnyOffsetAndRefuseEveryTampering() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("seal-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let sealer = Sealer(keys: .generate())
        let context = Sealer.Context(kind: "object", id: "index/a.idx")
        for size in [0, 1, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 100] {
            let plain = (0..<size).map { UInt8(truncatingIfNeeded: $0 * 7 + $0 / 251) }
            let plainPath = "\(directory)/p\(size)", sealedPath = "\(directory)/s\(size)"
            FileManager.default.createFile(atPath: plainPath, contents: Data(plain))
            try sealer.sealFile(plainPath, to: sealedPath, context: context)
            let pages = SealedFileFormat.pageCount(plaintextSize: UInt64(size))
            #expect(try FileSystem.status(sealedPath).size == UInt64(24 + size) + pages * 16)
            let reader = try SealedFileReader(file: try OpenFile(path: sealedPath), sealer: sealer, context: context)
            #expect(try reader.size() == UInt64(size))
            #expect(try reader.readBytes(count: size + 10, at: 0) == plain)
            if size > 5000 { #expect(try reader.readBytes(count: 200, at: 4000) == Array(plain[4000..<4200])) }
            // Another name: does not open.
            #expect(throws: SealError.self) {
                _ = try SealedFileReader(file: try OpenFile(path: sealedPath), sealer: sealer, context: Sealer.Context(kind: "object", id: "index/b.idx"))
            }
            let sealed = Array(FileManager.default.contents(atPath: sealedPath)!)
            func refused(_ bytes: [UInt8], _ what: String) throws {
                let path = "\(directory)/t"
                FileManager.default.createFile(atPath: path, contents: Data(bytes))
                let opened = Result { try SealedFileReader(file: try OpenFile(path: path), sealer: sealer, context: context) }
                switch opened {
                case .failure: break
                case .success(let tampered):
                    #expect(throws: SealError.self, "\(what), \(size) bytes") { _ = try tampered.readBytes(count: size, at: 0) }
                }
            }
            // A flipped bit anywhere (header, every page), a cut at a page boundary, an
            // extra page, two pages swapped.
            for offset in stride(from: 4, to: sealed.count, by: max(1, sealed.count / 9)) {
                var flipped = sealed
                flipped[offset] ^= 0x20
                try refused(flipped, "bit flipped at \(offset)")
            }
            if pages > 1 { try refused(Array(sealed[..<(24 + 4112)]), "cut after the first page") }
            if pages > 2 {
                let first = Array(sealed[24..<(24 + 4112)]), second = Array(sealed[(24 + 4112)..<(24 + 2 * 4112)])
                try refused(Array(sealed[..<24]) + second + first + Array(sealed[(24 + 2 * 4112)...]), "pages swapped")
            }
            try refused(sealed + Array(sealed[24..<min(sealed.count, 24 + 4112)]), "a page appended")
        }
    }

    /// The cipher under the sealing (libcrypto, in place) is AES-256-GCM as swift-crypto
    /// computes it, both ways, and refuses a changed tag.
    @Test func theInPlaceCipherIsAESGCMAsSwiftCryptoComputesIt() throws {
        let key = (0..<32).map { UInt8($0 * 3) }, nonce = (0..<12).map { UInt8(200 - $0) }
        let aad = Array("disksnap/object/x".utf8)
        for size in [0, 1, 15, 16, 4096, 100_000] {
            let plain = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            var cipher = [UInt8](repeating: 0, count: size), tag = [UInt8](repeating: 0, count: 16)
            try key.withUnsafeBytes { k in try nonce.withUnsafeBytes { n in try aad.withUnsafeBytes { a in try plain.withUnsafeBytes { p in
                try cipher.withUnsafeMutableBytes { c in try tag.withUnsafeMutableBytes { t in
                    try AESGCM.seal(key: k, nonce: n, aad: a, p, into: c, tag: t)
                } }
            } } } }
            let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: nonce), ciphertext: cipher, tag: tag)
            #expect(Array(try AES.GCM.open(box, using: SymmetricKey(data: key), authenticating: aad)) == plain)
            let theirs = try AES.GCM.seal(plain, using: SymmetricKey(data: key), nonce: AES.GCM.Nonce(data: nonce), authenticating: aad)
            #expect(Array(theirs.ciphertext) == cipher && Array(theirs.tag) == tag)
            var opened = [UInt8](repeating: 0, count: size)
            var badTag = tag
            badTag[0] ^= 1
            for (t, expected) in [(tag, true), (badTag, false)] {
                let ok = try key.withUnsafeBytes { k in try nonce.withUnsafeBytes { n in try aad.withUnsafeBytes { a in try cipher.withUnsafeBytes { c in
                    try t.withUnsafeBytes { t in try opened.withUnsafeMutableBytes { o in try AESGCM.open(key: k, nonce: n, aad: a, c, tag: t, into: o) } }
                } } } }
                #expect(ok == expected)
                if expected { #expect(opened == plain) }
            }
        }
    }
}
