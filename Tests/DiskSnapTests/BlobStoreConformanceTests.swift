import Testing
import Foundation
import Synchronization
import DiskSnapSys
import DiskSnapStore
import DiskSnapS3

/// The one suite every blob store passes (docs/DESIGN.md, "Blob stores"). S3 joins when
/// `DISKSNAP_TEST_S3_ENDPOINT` names a server (tools/test starts SeaweedFS and runs the suite
/// again with it; `DISKSNAP_TEST_S3_REQUIRED=1` makes a missing server a failure).
enum Backend: String, CaseIterable, CustomStringConvertible, Sendable {
    case memory, local, s3

    var description: String { rawValue }

    static var allCases: [Backend] { S3Test.endpoint == nil ? [.memory, .local] : [.memory, .local, .s3] }

    func make() throws -> any BlobStore {
        switch self {
        case .memory: return MemoryBlobStore()
        case .local:
            let root = FileManager.default.temporaryDirectory.appendingPathComponent("blobstore-\(UUID().uuidString)").path
            return try LocalBlobStore(root: root)
        case .s3:
            let store = S3BlobStore(S3Location(endpoint: S3Test.endpoint!, bucket: "disksnap-test", prefix: "conformance/\(UUID().uuidString.lowercased())",
                                               region: "us-east-1", credentials: S3Test.credentials))
            try store.createBucket()
            return store
        }
    }
}

enum S3Test {
    static var endpoint: String? { ProcessInfo.processInfo.environment["DISKSNAP_TEST_S3_ENDPOINT"] }
    static var credentials: SigV4Credentials {
        let env = ProcessInfo.processInfo.environment
        return SigV4Credentials(accessKeyId: env["AWS_ACCESS_KEY_ID"] ?? "", secretAccessKey: env["AWS_SECRET_ACCESS_KEY"] ?? "")
    }
}

@Suite struct S3ServerTests {
    @Test func aServerIsThereWhenOneIsRequired() {
        if ProcessInfo.processInfo.environment["DISKSNAP_TEST_S3_REQUIRED"] == "1" {
            #expect(S3Test.endpoint != nil, "DISKSNAP_TEST_S3_REQUIRED=1 without DISKSNAP_TEST_S3_ENDPOINT")
        }
    }

    @Test func conditionalWritesAreHonouredAndWrongCredentialsRefused() throws {
        guard let endpoint = S3Test.endpoint else { return }
        let store = try Backend.s3.make()
        try (store as! S3BlobStore).checkConditionalWrites()
        let wrong = S3BlobStore(S3Location(endpoint: endpoint, bucket: "disksnap-test", prefix: "x", region: "us-east-1",
                                           credentials: SigV4Credentials(accessKeyId: S3Test.credentials.accessKeyId, secretAccessKey: "wrong")))
        #expect(code { _ = try wrong.info(BlobKey(validated: "a")) } == "BlobStore.AccessDenied")
        let missing = S3BlobStore(S3Location(endpoint: endpoint, bucket: "no-such-bucket-\(UUID().uuidString.lowercased().prefix(8))", prefix: "",
                                             region: "us-east-1", credentials: S3Test.credentials))
        #expect(code { _ = try missing.list(prefix: "", after: nil, limit: 1) } == "BlobStore.AccessDenied")
        let nobody = S3BlobStore(S3Location(endpoint: "http://127.0.0.1:9", bucket: "b", prefix: "", region: "us-east-1", credentials: S3Test.credentials))
        #expect(code { _ = try nobody.info(BlobKey(validated: "a")) } == "BlobStore.Unavailable")
    }
}

private func key(_ path: String) -> BlobKey { BlobKey(validated: path) }

private func code(_ body: () throws -> Void) -> String? {
    do { try body(); return nil } catch let error as BlobStoreError { return error.code } catch let error as any CodedError { return error.code } catch { return "\(error)" }
}

@Suite struct BlobStoreConformanceTests {
    @Test(arguments: Backend.allCases) func createIsCreateOnly(_ backend: Backend) throws {
        let store = try backend.make()
        let v1 = try store.create(key("snapshots/a.json"), [1, 2, 3])
        #expect(code { try store.create(key("snapshots/a.json"), [9]) } == "BlobStore.AlreadyExists")
        let (bytes, version) = try store.read(key("snapshots/a.json"))
        #expect(bytes == [1, 2, 3] && version == v1)
        #expect(try store.info(key("snapshots/a.json")) == BlobInfo(key: key("snapshots/a.json"), size: 3, version: v1))
        #expect(try store.info(key("snapshots/b.json")) == nil)
        #expect(code { _ = try store.read(key("snapshots/b.json")) } == "BlobStore.NotFound")
    }

    @Test(arguments: Backend.allCases) func aFileIsCreatedStreamedAndCreateOnly(_ backend: Backend) throws {
        let store = try backend.make()
        // 9 MiB + 3 bytes of varied content: more than one piece of every streaming path.
        let bytes = (0..<(9 << 20) + 3).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) }
        let path = "/tmp/disksnap-conformance-\(UUID().uuidString.lowercased())"
        try FileSystem.writeAtomically(bytes, to: path, temporaryDirectory: "/tmp")
        defer { try? FileSystem.removeIfExists(path) }
        let version = try store.create(key("packs/file.pack"), fromFile: path)
        let (stored, readVersion) = try store.read(key("packs/file.pack"))
        #expect(stored == bytes && readVersion == version)
        #expect(code { try store.create(key("packs/file.pack"), fromFile: path) } == "BlobStore.AlreadyExists")
        #expect(code { try store.create(key("packs/none.pack"), fromFile: path + ".absent") } != nil)
        #expect(try store.info(key("packs/none.pack")) == nil)
    }

    @Test(arguments: Backend.allCases) func ofEightConcurrentCreatesExactlyOneWins(_ backend: Backend) throws {
        let store = try backend.make()
        for round in 0..<5 {
            let k = key("packs/race-\(round).pack")
            let winners = Mutex<[Int]>([])
            DispatchQueue.concurrentPerform(iterations: 8) { writer in
                if (try? store.create(k, [UInt8](repeating: UInt8(writer), count: 4096))) != nil {
                    winners.withLock { $0.append(writer) }
                }
            }
            let won = winners.withLock { $0 }
            #expect(won.count == 1, "round \(round): \(won)")
            if let winner = won.first { #expect(try store.read(k).bytes == [UInt8](repeating: UInt8(winner), count: 4096)) }
        }
    }

    @Test(arguments: Backend.allCases) func replaceIsCompareAndSwap(_ backend: Backend) throws {
        let store = try backend.make()
        let k = key("gc.json")
        let v1 = try store.replace(k, [1], ifVersion: nil)
        #expect(code { try store.replace(k, [2], ifVersion: nil) } == "BlobStore.VersionMismatch")
        #expect(code { try store.replace(k, [2], ifVersion: BlobVersion("not-a-version")) } == "BlobStore.VersionMismatch")
        let v2 = try store.replace(k, [2], ifVersion: v1)
        #expect(v2 != v1)
        #expect(code { try store.replace(k, [3], ifVersion: v1) } == "BlobStore.VersionMismatch")
        #expect(try store.read(k).bytes == [2])
        // Eight writers from one version: exactly one wins.
        let winners = Mutex<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 8) { writer in
            if (try? store.replace(k, [UInt8(10 + writer)], ifVersion: v2)) != nil { winners.withLock { $0 += 1 } }
        }
        #expect(winners.withLock { $0 } == 1)
        // Other bytes, another version (the same bytes may keep it: an ETag names content).
        let (_, v3) = try store.read(k)
        let v4 = try store.replace(k, [99], ifVersion: v3)
        #expect(v4 != v3 && Set([v1, v2, v3]).count == 3)
    }

    @Test(arguments: Backend.allCases) func listingIsSortedPagedAndCurrent(_ backend: Backend) throws {
        let store = try backend.make()
        let names = ["packs/00/b.pack", "packs/00/a.pack", "packs/ff/c.pack", "packsx", "snapshots/s-1.json", "snapshots/s-10.json", "snapshots/t-1.json"]
        for name in names { try store.create(key(name), Array(name.utf8)) }
        #expect(try store.listAll(prefix: "packs/", pageSize: 2).map(\.key.path) == ["packs/00/a.pack", "packs/00/b.pack", "packs/ff/c.pack"])
        #expect(try store.listAll(prefix: "snapshots/s-").map(\.key.path) == ["snapshots/s-1.json", "snapshots/s-10.json"])
        #expect(try store.listAll(prefix: "packs").map(\.key.path).contains("packsx"))
        let first = try store.list(prefix: "packs/", after: nil, limit: 1)
        #expect(first.truncated && first.blobs.map(\.key.path) == ["packs/00/a.pack"] && first.blobs[0].size == 15)
        let rest = try store.list(prefix: "packs/", after: first.blobs[0].key, limit: 10)
        #expect(!rest.truncated && rest.blobs.map(\.key.path) == ["packs/00/b.pack", "packs/ff/c.pack"])
        #expect(try store.list(prefix: "nothing/", after: nil, limit: 10).blobs.isEmpty)
        try store.delete(key("packs/00/a.pack"))
        #expect(try store.listAll(prefix: "packs/").map(\.key.path) == ["packs/00/b.pack", "packs/ff/c.pack"])
    }

    @Test(arguments: Backend.allCases) func rangedReadsAtTheEdges(_ backend: Backend) throws {
        let store = try backend.make()
        let k = key("packs/p.pack")
        let bytes = (0..<100).map { UInt8($0) }
        try store.create(k, bytes)
        #expect(try store.read(k, range: 0..<10) == Array(bytes[0..<10]))
        #expect(try store.read(k, range: 90..<100) == Array(bytes[90..<100]))
        #expect(try store.read(k, range: 99..<100) == [99])
        #expect(try store.read(k, range: 95..<1000) == Array(bytes[95..<100]), "cut at the end")
        #expect(try store.read(k, range: 5..<5) == [])
        #expect(code { _ = try store.read(k, range: 100..<101) } == "BlobStore.InvalidRange")
        #expect(code { _ = try store.read(k, range: 500..<600) } == "BlobStore.InvalidRange")
        #expect(code { _ = try store.read(key("packs/none.pack"), range: 0..<1) } == "BlobStore.NotFound")
        // Into a caller's buffer: the same bytes, the same cuts and errors.
        var buffer = [UInt8](repeating: 0xEE, count: 1000)
        let into = { (range: Range<UInt64>) throws -> [UInt8] in
            try buffer.withUnsafeMutableBytes { b in Array(b[..<(try store.read(k, range: range, into: b))]) }
        }
        #expect(try into(0..<10) == Array(bytes[0..<10]))
        #expect(try into(95..<1000) == Array(bytes[95..<100]), "cut at the end")
        #expect(try into(0..<100) == bytes)
        #expect(try into(5..<5) == [])
        #expect(code { _ = try into(100..<101) } == "BlobStore.InvalidRange")
        #expect(code { _ = try buffer.withUnsafeMutableBytes { try store.read(key("packs/none.pack"), range: 0..<1, into: $0) } } == "BlobStore.NotFound")
        try store.create(key("empty"), [])
        #expect(try store.read(key("empty")).bytes == [])
        #expect(code { _ = try store.read(key("empty"), range: 0..<1) } == "BlobStore.InvalidRange")
    }

    @Test(arguments: Backend.allCases) func deletesAreIdempotent(_ backend: Backend) throws {
        let store = try backend.make()
        for i in 0..<5 { try store.create(key("fixed/s-\(i).fidx"), [UInt8(i)]) }
        try store.delete(key("fixed/s-0.fidx"))
        try store.delete(key("fixed/s-0.fidx"))
        try store.delete([key("fixed/s-1.fidx"), key("fixed/s-9.fidx"), key("fixed/s-2.fidx")])
        #expect(try store.listAll(prefix: "fixed/").map(\.key.path) == ["fixed/s-3.fidx", "fixed/s-4.fidx"])
        #expect(code { _ = try store.read(key("fixed/s-1.fidx")) } == "BlobStore.NotFound")
        // A deleted key can be created again.
        try store.create(key("fixed/s-1.fidx"), [7])
        #expect(try store.read(key("fixed/s-1.fidx")).bytes == [7])
    }

    @Test(arguments: Backend.allCases) func aStreamedBlobAppearsWholeAtCommitOnly(_ backend: Backend) throws {
        let store = try backend.make()
        let k = key("packs/streamed.pack")
        let writer = try store.writer(for: k)
        let pieces = (0..<3).map { piece in [UInt8](repeating: UInt8(piece + 1), count: 70_000) }
        for piece in pieces { try writer.append(piece) }
        #expect(try store.info(k) == nil, "not visible before its commit")
        let version = try writer.commit()
        #expect(try store.read(k) == (pieces.flatMap { $0 }, version))
        // Create-only: a second writer of the key fails at commit and changes nothing.
        let second = try store.writer(for: k)
        try second.append([0])
        #expect(code { _ = try second.commit() } == "BlobStore.AlreadyExists")
        second.abort()
        #expect(try store.read(k).bytes.count == 210_000)
        // Aborted: nothing.
        let dropped = try store.writer(for: key("packs/dropped.pack"))
        try dropped.append([1, 2, 3])
        dropped.abort()
        #expect(try store.info(key("packs/dropped.pack")) == nil)
        #expect(try store.listAll(prefix: "packs/").map(\.key.path) == ["packs/streamed.pack"])
    }

    @Test(arguments: Backend.allCases) func leasesAreTakenRenewedLostAndReleased(_ backend: Backend) throws {
        let store = try backend.make()
        let k = key("locks/repository.lease")
        let now = Mutex<Int64>(1_000_000)
        let clock: @Sendable () -> Int64 = { now.withLock { $0 } }
        let a = try Lease.acquire(k, in: store, purpose: "create", duration: 60_000, skew: 30_000, clock: clock)
        #expect(code { _ = try Lease.acquire(k, in: store, purpose: "gc", clock: clock) } == "Repository.Locked")
        now.withLock { $0 += 60_000 }
        try a.renew(duration: 60_000)
        now.withLock { $0 += 80_000 }  // 20 s past expiry: within the skew, still held
        #expect(code { _ = try Lease.acquire(k, in: store, purpose: "gc", clock: clock) } == "Repository.Locked")
        now.withLock { $0 += 20_000 }  // past expiry + skew: a killed holder's lease is taken over
        let b = try Lease.acquire(k, in: store, purpose: "gc", duration: 60_000, skew: 30_000, clock: clock)
        #expect(code { try a.renew() } == "Repository.Locked", "the old holder learns it lost the lease")
        try a.release()  // lost: left to its new holder
        #expect(code { _ = try Lease.acquire(k, in: store, purpose: "prune", clock: clock) } == "Repository.Locked")
        try b.release()
        let c = try Lease.acquire(k, in: store, purpose: "prune", clock: clock)
        #expect(c.record.purpose == "prune")
        // A lease that cannot be read is held, never taken.
        let broken = key("locks/broken.lease")
        try store.create(broken, Array("not json".utf8))
        #expect(code { _ = try Lease.acquire(broken, in: store, purpose: "x", clock: clock) } == "Repository.LockUnknown")
    }

    @Test(arguments: Backend.allCases) func sharedAndExclusiveLeasesExcludeEachOther(_ backend: Backend) throws {
        let store = try backend.make()
        let now = Mutex<Int64>(1_000_000)
        let clock: @Sendable () -> Int64 = { now.withLock { $0 } }
        func take(_ mode: Lease.Mode) throws -> Lease? {
            try Lease.take(lock: "readers", mode, in: store, purpose: "test", duration: 60_000, skew: 30_000, clock: clock)
        }
        func shared() throws -> [String] { try store.listAll(prefix: "locks/readers/").map(\.key.path) }
        let r1 = try #require(try take(.shared))
        let r2 = try #require(try take(.shared), "readers share the lock")
        #expect(try shared().count == 2)
        #expect(try take(.exclusive) == nil, "live readers keep the exclusive taker out")
        try r1.remove()
        #expect(try take(.exclusive) == nil)
        try r2.remove()
        let x = try #require(try take(.exclusive))
        #expect(try take(.shared) == nil, "an exclusive holder keeps readers out")
        #expect(try take(.single) == nil && take(.exclusive) == nil)
        #expect(try shared().isEmpty, "a reader that backs off leaves no lease behind")
        try x.release()
        // A killed reader's lease runs out: the exclusive taker removes it and gets the lock.
        _ = try #require(try take(.shared))
        now.withLock { $0 += 90_001 }
        let y = try #require(try take(.exclusive))
        #expect(try shared().isEmpty)
        try y.release()
        // A reader's lease that cannot be read is held, never removed.
        try store.create(key("locks/readers/broken.lease"), Array("{".utf8))
        #expect(code { _ = try take(.exclusive) } == "Repository.LockUnknown")
        #expect(try shared() == ["locks/readers/broken.lease"])
        #expect(try take(.shared) != nil, "readers still share it")
    }

    @Test(arguments: Backend.allCases) func transientFaultsAreRetriedAndLostAnswersRecognized(_ backend: Backend) throws {
        let faulty = FaultInjectingBlobStore(try backend.make())
        let delays = Mutex<[Double]>([])
        let store = RetryingBlobStore(faulty, policy: RetryPolicy(attempts: 4, base: 0.1, cap: 1), sleep: { d in delays.withLock { $0.append(d) } })
        let unavailable = BlobStoreError(.transient, "503 SlowDown (injected)")
        faulty.inject(.fail(unavailable), on: .create, call: 1)
        faulty.inject(.fail(unavailable), on: .create, call: 2)
        try store.create(key("a"), [1])
        #expect(faulty.count(.create) == 3 && delays.withLock { $0.count } == 2)
        // The write was done but its answer lost: the retry finds our bytes, and succeeds.
        faulty.inject(.failAfter(unavailable), on: .create)
        try store.create(key("b"), [2])
        #expect(try store.read(key("b")).bytes == [2])
        let (_, v) = try store.read(key("b"))
        faulty.inject(.failAfter(unavailable), on: .replace)
        let v2 = try store.replace(key("b"), [3], ifVersion: v)
        #expect(try store.read(key("b")) == ([3], v2))
        // Someone else's bytes under the key are not mistaken for ours.
        faulty.inject(.fail(unavailable), on: .create)
        #expect(code { try store.create(key("b"), [4]) } == "BlobStore.AlreadyExists")
        // Bounded: four attempts, then the error.
        for call in 1...4 { faulty.inject(.fail(unavailable), on: .read, call: call) }
        let before = faulty.count(.read)
        #expect(code { _ = try store.read(key("a")) } == "BlobStore.Unavailable")
        #expect(faulty.count(.read) - before == 4)
        // Not transient: not retried.
        faulty.inject(.fail(BlobStoreError(.denied, "403 (injected)")), on: .info)
        let infoBefore = faulty.count(.info)
        #expect(code { _ = try store.info(key("a")) } == "BlobStore.AccessDenied")
        #expect(faulty.count(.info) - infoBefore == 1)
        // A short read comes back short (the caller's checksums catch it).
        faulty.inject(.truncate(bytes: 0), on: .read)
        #expect(try store.read(key("b")).bytes == [])
        // Delays grow and stay under the cap.
        let all = delays.withLock { $0 }
        #expect(all.allSatisfy { $0 > 0 && $0 <= 1 })
    }

    @Test func keysNeverReachOutside() {
        for bad in ["", "/abs", "../up", "a/../b", "a//b", "a/./b", "a/", "sp ace", "a\\b", "ü", String(repeating: "a", count: 1025)] {
            #expect(throws: BlobStoreError.self) { _ = try BlobKey(bad) }
        }
        for good in ["a", "packs/00/ff.pack", "snapshots/s-1.json", ".hidden", "a..b", "x/...y"] {
            #expect((try? BlobKey(good)) != nil, "\(good)")
        }
    }

    @Test func retryDelaysGrowWithEqualJitter() {
        let policy = RetryPolicy(attempts: 6, base: 0.1, cap: 5)
        #expect(policy.delay(beforeRetry: 0, random: 0) == 0.05 && policy.delay(beforeRetry: 0, random: 0.999) < 0.1)
        #expect(policy.delay(beforeRetry: 3, random: 0) == 0.4)
        #expect(policy.delay(beforeRetry: 20, random: 0.5) == 3.75, "capped at 5 s, then jittered")
    }

    @Test func theLocalStoreReadsTheRepositoryLayoutAndCleansUpAfterTheKilled() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("blobstore-\(UUID().uuidString)").path
        try FileSystem.makeDirectories(root + "/packs")
        try FileSystem.writeAtomically([5, 6], to: root + "/packs/old.pack", temporaryDirectory: root)
        // A work area a killed process left: its lock is free.
        try FileSystem.makeDirectories(root + "/tmp/b-dead")
        try FileSystem.writeAtomically([0], to: root + "/tmp/b-dead/x.partial", temporaryDirectory: root)
        try FileSystem.writeAtomically([], to: root + "/tmp/b-dead.lock", temporaryDirectory: root)
        let store = try LocalBlobStore(root: root)
        #expect(try store.read(BlobKey(validated: "packs/old.pack")).bytes == [5, 6])
        #expect(!FileSystem.exists(root + "/tmp/b-dead") && !FileSystem.exists(root + "/tmp/b-dead.lock"))
    }
}

/// A lease held by a process of this very boot that is gone is known dead at once; no
/// other evidence (another boot, no boot id, a live process) counts.
@Suite struct LeaseLivenessTests {
    @Test func onlyAGoneProcessOfThisBootIsDead() throws {
        let boot = try #require(LeaseRecord.thisBoot)
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/true")
        try child.run()
        child.waitUntilExit()  // reaped: its pid names no process now
        var record = LeaseRecord(owner: "o", host: "h", processId: child.processIdentifier, purpose: "test", acquiredAt: 0, expiresAt: .max)
        record.bootId = boot
        #expect(record.holderIsGoneFromThisBoot)
        record.processId = getpid()
        #expect(!record.holderIsGoneFromThisBoot)
        record.processId = child.processIdentifier
        record.bootId = "another-boot"
        #expect(!record.holderIsGoneFromThisBoot)
        record.bootId = nil
        #expect(!record.holderIsGoneFromThisBoot)
    }
}
