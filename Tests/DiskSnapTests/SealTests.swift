import Testing
import Foundation
@testable import DiskSnapSeal
@testable import DiskSnapFormat

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
        let sealed = sealer.seal(plaintext, context: here)
        #expect(sealed.count == plaintext.count + Sealer.overhead)
        #expect(try sealer.open(sealed, context: here, what: "block") == plaintext)
        #expect(!String(decoding: sealed, as: UTF8.self).contains("DISKSNAP-SECRET"))
        // Two seals of the same bytes share nothing but the header.
        #expect(sealer.seal(plaintext, context: here)[4...] != sealed[4...])
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
        let keyed = chunk.withUnsafeBytes { one.chunkDigest(of: $0) }
        #expect(keyed != plain)
        #expect(keyed == chunk.withUnsafeBytes { one.chunkDigest(of: $0) })
        #expect(keyed != chunk.withUnsafeBytes { other.chunkDigest(of: $0) })
    }
}
