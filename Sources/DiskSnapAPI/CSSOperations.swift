import Foundation
import DiskSnapAPIWire
import DiskSnapSys
import DiskSnapFormat
import DiskSnapCatalog
import DiskSnapEngine

/// Huawei Cloud CSS (REST, `/v1.0/{project_id}/clusters/{cluster_id}/...`), as its SDK
/// (`huaweicloudsdkcss` v1) calls it. A cluster is an instance; its snapshot ("backup") is
/// every disk of the instance taken as one group (`GroupId`): admitted all together or not
/// at all, read one after another. Request bodies are snake_case JSON, answers camelCase, as
/// the SDK reads them.
struct CSSOperations {
    let service: APIService
    var core: SnapshotOperations { SnapshotOperations(service: service) }

    /// The path after `/v1.0/{project_id}/clusters/{cluster_id}/`, decoded.
    func perform(method: String, cluster: String, rest: [String], body: [UInt8]) async throws -> (status: Int, body: APIValue) {
        switch (method, rest.count, rest.first) {
        case ("POST", 1, "index_snapshot"): return (200, try await create(cluster, body))
        case ("GET", 1, "index_snapshots"): return (200, try await list(cluster))
        case ("DELETE", 2, "index_snapshot"): return (200, try await delete(cluster, rest[1]))
        case ("POST", 3, "index_snapshot") where rest[2] == "restore": return (200, try await restore(cluster, rest[1], body))
        default:
            throw APIError("APIGW.0101", "the API \(method) .../clusters/\(cluster)/\(rest.joined(separator: "/")) does not exist here (docs/API.md lists what is served)", status: 404)
        }
    }

    func object(_ body: [UInt8]) throws(APIError) -> [String: Any] {
        guard !body.isEmpty else { return [:] }
        guard let parsed = try? JSONSerialization.jsonObject(with: Data(body)), let object = parsed as? [String: Any] else {
            throw APIError("CSS.0001", "the request body is not a JSON object", status: 400)
        }
        return object
    }

    func string(_ object: [String: Any], _ key: String) throws(APIError) -> String? {
        guard let value = object[key], !(value is NSNull) else { return nil }
        guard let text = value as? String else { throw APIError("CSS.0001", "\(key) must be a string", status: 400) }
        return text
    }

    /// The cluster's disks: the system disk first, then by name.
    func clusterDisks(_ cluster: String) async throws -> [DiskRecord] {
        let disks = try await core.disks().filter { $0.instance == cluster }
        guard !disks.isEmpty else {
            throw APIError("CSS.0015", "the cluster \(cluster) does not exist (no registered disk has it as its instance)", status: 404)
        }
        return disks.sorted { ($0.diskType == "system" ? 0 : 1, $0.diskName) < ($1.diskType == "system" ? 0 : 1, $1.diskName) }
    }

    func create(_ cluster: String, _ body: [UInt8]) async throws -> APIValue {
        let object = try object(body)
        guard let snapshot = object["snapshot"] as? [String: Any] ?? (object["name"] != nil ? object : nil) else {
            throw APIError("CSS.0001", "the request body names no snapshot (name, description)", status: 400)
        }
        guard let name = try string(snapshot, "name"), !name.isEmpty else { throw APIError("CSS.0001", "name is required", status: 400) }
        let description = try string(snapshot, "description") ?? ""
        let groupID = "g-" + String(SnapshotID.generate().rawValue.dropFirst(2))
        let requests = try await clusterDisks(cluster).map { disk in
            var request = CreateRequest(source: disk.diskId.rawValue, name: name)
            request.description = description
            request.groupId = groupID
            return request
        }
        try await core.createGroup(requests)
        return .object([("backup", .object([("id", .string(groupID)), ("name", .string(name))]))])
    }

    /// A backup: a group, or a snapshot of one of the cluster's disks taken alone.
    struct Backup {
        var id: String
        var members: [SnapshotRecord]
    }

    func backups(_ cluster: String) async throws -> [Backup] {
        let disks = Set(try await clusterDisks(cluster).map(\.diskId))
        let records = try await core.snapshots().filter { $0.sourceDiskId.map(disks.contains) == true }
        var order: [String] = []
        var members: [String: [SnapshotRecord]] = [:]
        for record in records {
            let id = record.groupId ?? record.snapshotId.rawValue
            if members[id] == nil { order.append(id) }
            members[id, default: []].append(record)
        }
        return order.map { Backup(id: $0, members: members[$0]!) }
    }

    func list(_ cluster: String) async throws -> APIValue {
        let items: [APIValue] = try await backups(cluster).map { backup in
            let first = backup.members.min { $0.creationTime < $1.creationTime }!
            let failed = backup.members.filter { $0.status == .failed || $0.status == .damaged }.count
            let status = backup.members.contains { $0.status == .progressing } ? "BUILDING" : (failed > 0 ? "FAILED" : "COMPLETED")
            let ends = backup.members.compactMap { $0.completionTime.flatMap(ISOTime.parse) }
            let start = ISOTime.parse(first.creationTime) ?? Date()
            return .object([
                ("created", .string(String(cloudTime(first.creationTime).dropLast()))),
                ("datastore", .object([("type", .string("disksnap")), ("version", .string("1"))])),
                ("description", .string(first.description)),
                ("id", .string(backup.id)),
                ("clusterId", .string(cluster)),
                ("clusterName", .string(cluster)),
                ("name", .string(first.snapshotName)),
                ("status", .string(status)),
                ("backupType", .string(first.automatic ? "0" : "1")),
                ("backupMethod", .string(first.automatic ? "auto" : "manual")),
                ("backupFrequency", .string("")),
                ("indices", .string(backup.members.compactMap { $0.sourceDiskId?.rawValue }.joined(separator: ","))),
                ("totalShards", .int(backup.members.count)),
                ("failedShards", .int(failed)),
                ("restoreStatus", .string("none")),
                ("startTime", .int(Int64(start.timeIntervalSince1970 * 1000))),
                ("endTime", .int(status == "BUILDING" ? 0 : Int64((ends.max() ?? start).timeIntervalSince1970 * 1000))),
                ("bucketName", .string("")),
            ])
        }
        return .object([("backups", .array(items))])
    }

    func backup(_ cluster: String, _ id: String) async throws -> Backup {
        guard let found = try await backups(cluster).first(where: { $0.id == id }) else {
            throw APIError("CSS.0015", "the cluster \(cluster) has no snapshot \(id)", status: 404)
        }
        return found
    }

    func delete(_ cluster: String, _ id: String) async throws -> APIValue {
        try await core.delete(try await backup(cluster, id).members.map(\.snapshotId.rawValue))
        return .object([])
    }

    /// Every disk of the group rolled back in place from its member (ECS ResetDisk for each):
    /// all admitted before any is written.
    func restore(_ cluster: String, _ id: String, _ body: [UInt8]) async throws -> APIValue {
        let object = try object(body)
        if let target = try string(object, "target_cluster"), !target.isEmpty, target != cluster {
            throw APIError("CSS.0001", "restoring into another cluster (\(target)) is not served: a snapshot rolls back the disks it was taken of", status: 400)
        }
        let members = try await backup(cluster, id).members
        guard members.allSatisfy({ $0.status == .accomplished }) else {
            throw APIError("IncorrectSnapshotStatus", "snapshot \(id) is not complete: every disk of it must be accomplished", status: 403)
        }
        var admitted: [SnapshotOperations.AdmittedReset] = []
        for member in members {
            guard let disk = member.sourceDiskId else { continue }
            admitted.append(try await core.admitReset(diskID: disk.rawValue, snapshotID: member.snapshotId.rawValue, dryRun: false))
        }
        for one in admitted { service.resetInBackground(one) }
        return .object([])
    }
}
