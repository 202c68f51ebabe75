import Foundation
import DiskSnapAPIWire
import Synchronization
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog
import DiskSnapEngine

/// What every API family does to snapshots and disks, whatever its names and shapes: each
/// operation is the engine's path that the CLI takes too, run off the event loops. The
/// families (`ECSOperations`, `ECDOperations`, `SWASOperations`) only translate.
struct SnapshotOperations {
    let service: APIService
    var repository: Repository { service.repository }

    /// `RegionId` (or `regionId`) is the server's `--region`.
    func checkRegion(_ parameters: Parameters, required: Bool) throws(APIError) {
        guard let region = parameters["RegionId"] ?? parameters["regionId"], !region.isEmpty else {
            if required { throw APIError.missing("RegionId") }
            return
        }
        guard region == service.settings.region else {
            throw APIError("InvalidRegionId.NotFound", "the region \(region) does not exist here; this server is region \(service.settings.region)", status: 404)
        }
    }

    /// The tags of a create, under the rules.
    func tags(_ parameters: Parameters) throws -> [Tag] {
        try parameters.tags().map { try Tag(key: $0.key, value: $0.value) }
    }

    /// A registered disk by its id; a client names no paths.
    func disk(_ id: String) throws -> DiskRecord {
        guard let diskID = DiskID(id), let disk = try DiskRegistry(repository: repository).disks().first(where: { $0.diskId == diskID }) else {
            throw APIError("InvalidDiskId.NotFound", "the disk \(id) does not exist", status: 404)
        }
        return disk
    }

    func disks() async throws -> [DiskRecord] {
        let repository = self.repository
        return try await service.blocking { try DiskRegistry(repository: repository).disks() }
    }

    /// Every snapshot, newest first (a dead creator's `progressing` record reads `failed`).
    func snapshots() async throws -> [SnapshotRecord] {
        let repository = self.repository, cache = service.recordCache
        return try await service.blocking { try Catalog(repository: repository).records(cache: cache).records }
            .sorted { ($0.creationTime, $0.snapshotId.rawValue) > ($1.creationTime, $1.snapshotId.rawValue) }
    }

    /// Admits a create and runs it in the background; the id at once (an earlier request's,
    /// for a client token seen before).
    func create(_ request: CreateRequest) async throws -> SnapshotID {
        let snapshotter = Snapshotter(repository: repository)
        switch try await service.blocking({ try snapshotter.admit(request) }) {
        case .reused(let record): return record.snapshotId
        case .admitted(let admitted):
            service.runInBackground(admitted)
            return admitted.record.snapshotId
        }
    }

    func delete(_ ids: [String]) async throws {
        for id in ids where SnapshotID(id) == nil {
            throw APIError("InvalidSnapshotId.NotFound", "the snapshot \(id) does not exist", status: 404)
        }
        let repository = self.repository
        _ = try await service.blocking { try Deleter(repository: repository).delete(ids) }
    }

    func modify(_ id: String, name: String?, description: String?) async throws {
        guard SnapshotID(id) != nil else { throw APIError("InvalidSnapshotId.NotFound", "the snapshot \(id) does not exist", status: 404) }
        let repository = self.repository
        _ = try await service.blocking { try Editor(repository: repository).modify(id, name: name, description: description) }
    }

    /// Rolls a disk back to one of its snapshots, in place: admitted now (the snapshot is the
    /// disk's and accomplished, the disk's lock is free, the disk is not in use), written in
    /// the background while the disk's lock is held: `DescribeDisks` says `ReIniting`
    /// meanwhile, and a failure stays in the disk's `OperationLocks` until a reset succeeds.
    /// With `dryRun`, everything is checked and nothing written.
    func reset(diskID: String, snapshotID: String, dryRun: Bool) async throws {
        let admitted = try await admitReset(diskID: diskID, snapshotID: snapshotID, dryRun: dryRun)
        if dryRun {
            throw APIError("DryRunOperation", "the request would succeed: the disk can be reset from \(snapshotID) (DryRun: nothing written)", status: 400)
        }
        service.resetInBackground(admitted)
    }

    /// A reset past its checks, holding the disk's lock and the target.
    struct AdmittedReset: @unchecked Sendable {
        let disk: DiskID
        let restore: AdmittedRestore
        let lock: HeldLock
    }

    func admitReset(diskID: String, snapshotID: String, dryRun: Bool) async throws -> AdmittedReset {
        let disk = try disk(diskID)
        guard let id = SnapshotID(snapshotID) else {
            throw APIError("InvalidSnapshotId.NotFound", "the snapshot \(snapshotID) does not exist", status: 404)
        }
        let repository = self.repository
        return try await service.blocking {
            let record = try Catalog(repository: repository).record(id)
            guard record.sourceDiskId == disk.diskId else {
                throw APIError("InvalidSnapshotId.NotFound", "the snapshot \(id) was not taken of disk \(disk.diskId); a disk is reset from its own snapshots", status: 404)
            }
            guard let diskLock = try repository.tryLock(name: "disk-\(disk.diskId.rawValue)") else {
                throw APIError("IncorrectDiskStatus", "disk \(disk.diskId) is being snapshotted or reset; try again later", status: 403)
            }
            var request = RestoreRequest(snapshot: id.rawValue, targetPath: disk.path)
            request.inPlace = true
            request.dryRun = dryRun
            do {
                return AdmittedReset(disk: disk.diskId, restore: try Restorer(repository: repository).admitInPlace(request), lock: diskLock)
            } catch let error as any CodedError where error.code == "Target.InUse" {
                throw APIError("IncorrectInstanceStatus", "\(error.message); stop what uses the disk first", status: 403)
            }
        }
    }

    /// Admits creates of several disks as one group (`GroupId`): all or none; then runs
    /// them one after another in the background.
    func createGroup(_ requests: [CreateRequest]) async throws {
        let snapshotter = Snapshotter(repository: repository)
        var admitted: [AdmittedCreate] = []
        do {
            for request in requests {
                switch try await service.blocking({ try snapshotter.admit(request) }) {
                case .admitted(let one): admitted.append(one)
                case .reused: throw APIError("InternalError", "a group create matched a client token", status: 500)
                }
            }
        } catch {
            for one in admitted { one.withdraw() }
            throw error
        }
        service.runInBackground(admitted)
    }
}

/// What the server knows of the resets it runs.
struct ResetState: Sendable {
    var running: Set<DiskID> = []
    /// The last reset of a disk that failed, and why (until one succeeds).
    var failed: [DiskID: String] = [:]
}

extension APIService {
    func resetInBackground(_ admitted: SnapshotOperations.AdmittedReset) {
        let disk = admitted.disk
        resets.withLock { $0.running.insert(disk) }
        Thread.detachNewThread {
            let outcome = Result { try admitted.restore.run() }
            withExtendedLifetime(admitted.lock) {}
            self.resets.withLock { state in
                state.running.remove(disk)
                switch outcome {
                case .success: state.failed[disk] = nil
                case .failure(let error):
                    state.failed[disk] = (error as? any CodedError)?.description ?? "\(error)"
                }
            }
        }
    }

    /// `ReIniting` while a reset writes the disk, else from its path and instance.
    func diskStatus(_ disk: DiskRecord) -> (status: String, size: UInt64?, failure: String?) {
        let size = (try? FileSystem.statusIfExists(disk.path))??.size
        let (resetting, failure) = resets.withLock { ($0.running.contains(disk.diskId), $0.failed[disk.diskId]) }
        let status = resetting ? "ReIniting" : (size == nil ? "Unavailable" : (disk.instance == nil ? "Available" : "In_use"))
        return (status, size, failure)
    }
}

extension Parameters {
    /// A list given as JSON (`["s-1","s-2"]`), or comma-separated (as SWAS's documents allow).
    func jsonOrCommaList(_ name: String, limit: Int = 100) throws(APIError) -> [String]? {
        guard let text = self[name], !text.isEmpty else { return nil }
        if text.hasPrefix("[") { return try jsonList(name, limit: limit) }
        let list = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard list.count <= limit else { throw APIError.invalid(name, "lists \(list.count) items; at most \(limit)") }
        return list
    }

    /// A repeat list: `SnapshotId.1`, `SnapshotId.2`, ... in N's order.
    func repeatList(_ name: String, limit: Int = 100) throws(APIError) -> [String] {
        var byIndex: [(Int, String)] = []
        for (key, value) in items where key.hasPrefix(name + ".") {
            guard let n = Int(key.dropFirst(name.count + 1)), n >= 1 else { throw APIError.invalid(key, "is not \(name).N with N from 1") }
            byIndex.append((n, value))
        }
        guard byIndex.count <= limit else { throw APIError.invalid(name, "lists \(byIndex.count) items; at most \(limit)") }
        return byIndex.sorted { $0.0 < $1.0 }.map(\.1)
    }
}

/// `PageNumber` (from 1) and `PageSize` (1-100, default 10): the page asked, its items, and
/// the fields an answer gives about it.
struct PageRequest {
    let number: Int
    let size: Int

    init(_ parameters: Parameters) throws(APIError) {
        size = try parameters.int("PageSize", default: 10, range: 1...100)
        number = try parameters.int("PageNumber", default: 1, range: 1...Int(Int32.max))
    }

    func slice<T>(_ items: [T]) -> ArraySlice<T> {
        let start = min(items.count, (number - 1) * size)
        return items[start..<min(items.count, start + size)]
    }

    /// `TotalCount`, `PageNumber`, `PageSize`.
    func fields(total: Int) -> [(String, APIValue)] {
        [("TotalCount", .int(total)), ("PageNumber", .int(number)), ("PageSize", .int(size))]
    }
}

extension [SnapshotRecord] {
    /// Those with every tag given (a tag with an empty value: any value).
    func having(tags: [(key: String, value: String)]) -> [SnapshotRecord] {
        filter { record in tags.allSatisfy { tag in record.tags.contains { $0.key == tag.key && (tag.value.isEmpty || $0.value == tag.value) } } }
    }
}

/// The cloud's times: UTC to the second (`2026-12-05T12:00:00Z`) from our records'
/// `2026-12-05T12:00:00.123Z` (cut as text: a date formatter per item cost 0.4 ms).
func cloudTime(_ text: String) -> String {
    let bytes = Array(text.utf8)
    guard bytes.count > 20, bytes[19] == UInt8(ascii: "."), bytes.last == UInt8(ascii: "Z") else { return text }
    return String(decoding: bytes[..<19], as: UTF8.self) + "Z"
}

/// Bytes as whole GiB, rounded up (the clouds give disk sizes so).
func gibibytes(_ bytes: UInt64) -> Int { Int((bytes + (1 << 30) - 1) >> 30) }
