import DiskSnapAPIWire
import DiskSnapFormat
import DiskSnapCatalog
import DiskSnapEngine

/// Simple Application Server (API version 2020-06-01): a server is an instance. Lists are
/// bare (`Snapshots: [...]`) and tags `[{Key, Value}]`, as its SDK parses them.
struct SWASOperations {
    static let version = "2020-06-01"
    let service: APIService
    var core: SnapshotOperations { SnapshotOperations(service: service) }

    func perform(_ action: String, _ parameters: Parameters) async throws -> APIValue {
        try core.checkRegion(parameters, required: false)
        switch action {
        case "CreateSnapshot":
            let disk = try core.disk(try parameters.required("DiskId"))
            var request = CreateRequest(source: disk.diskId.rawValue, name: try parameters.required("SnapshotName"))
            request.tags = try core.tags(parameters)
            if let token = parameters["ClientToken"], !token.isEmpty { request.clientToken = try ClientToken(token) }
            return .object([("SnapshotId", .string(try await core.create(request).rawValue))])
        case "ListSnapshots": return try await listSnapshots(parameters)
        case "DeleteSnapshot":
            try await core.delete([try parameters.required("SnapshotId")])
            return .object([])
        case "DeleteSnapshots":
            guard let ids = try parameters.jsonOrCommaList("SnapshotIds"), !ids.isEmpty else { throw APIError.missing("SnapshotIds") }
            try await core.delete(ids)
            return .object([])
        case "UpdateSnapshotAttribute":
            try await core.modify(try parameters.required("SnapshotId"), name: nil, description: parameters["Remark"] ?? "")
            return .object([])
        case "ResetDisk":
            try await core.reset(diskID: try parameters.required("DiskId"), snapshotID: try parameters.required("SnapshotId"), dryRun: false)
            return .object([])
        case "ListDisks": return try await listDisks(parameters)
        default: throw APIError.unsupportedOperation(action, Self.version)
        }
    }

    func listSnapshots(_ parameters: Parameters) async throws -> APIValue {
        let paging = try PageRequest(parameters)
        let ids = try parameters.jsonOrCommaList("SnapshotIds")
        let tags = try parameters.tags()
        let disks = try await core.disks()
        let instanceOf = Dictionary(uniqueKeysWithValues: disks.map { ($0.diskId, $0.instance ?? "") })
        var records = try await core.snapshots()
        if let instance = parameters["InstanceId"], !instance.isEmpty { records = records.filter { $0.sourceDiskId.flatMap { instanceOf[$0] } == instance } }
        if let disk = parameters["DiskId"], !disk.isEmpty { records = records.filter { $0.sourceDiskId?.rawValue == disk } }
        if let ids { records = records.filter { ids.contains($0.snapshotId.rawValue) } }
        if let type = parameters["SourceDiskType"], !type.isEmpty { records = records.filter { $0.sourceDiskType?.lowercased() == type.lowercased() } }
        records = records.having(tags: tags)
        let items: [APIValue] = paging.slice(records).map { record in
            let status: String = switch record.status {
            case .progressing: "Progressing"
            case .accomplished: "Accomplished"
            case .failed, .damaged: "Failed"
            }
            return .object([
                ("SnapshotId", .string(record.snapshotId.rawValue)),
                ("SnapshotName", .string(record.snapshotName)),
                ("InstanceId", .string(record.sourceDiskId.flatMap { instanceOf[$0] } ?? "")),
                ("SourceDiskId", .string(record.sourceDiskId?.rawValue ?? "")),
                ("SourceDiskType", .string(record.sourceDiskType ?? "")),
                ("Status", .string(status)),
                ("Progress", .string(record.status == .accomplished ? "100%" : record.progress)),
                ("CreationTime", .string(cloudTime(record.creationTime))),
                ("RegionId", .string(service.settings.region)),
                ("Remark", .string(record.description)),
                ("Tags", .array(record.tags.map { .object([("Key", .string($0.key)), ("Value", .string($0.value))]) })),
            ])
        }
        return .object(paging.fields(total: records.count) + [("Snapshots", .array(items))])
    }

    func listDisks(_ parameters: Parameters) async throws -> APIValue {
        let paging = try PageRequest(parameters)
        let ids = try parameters.jsonOrCommaList("DiskIds")
        var disks = try await core.disks()
        if let instance = parameters["InstanceId"], !instance.isEmpty { disks = disks.filter { $0.instance == instance } }
        if let ids { disks = disks.filter { ids.contains($0.diskId.rawValue) } }
        if let type = parameters["DiskType"], !type.isEmpty { disks = disks.filter { $0.diskType == type.lowercased() } }
        let items: [APIValue] = paging.slice(disks).map { disk in
            let (status, size, _) = service.diskStatus(disk)
            return .object([
                ("DiskId", .string(disk.diskId.rawValue)),
                ("DiskName", .string(disk.diskName)),
                ("InstanceId", .string(disk.instance ?? "")),
                ("RegionId", .string(service.settings.region)),
                ("Category", .string("LOCAL")),
                ("DiskType", .string(disk.diskType)),
                ("Size", .int(size.map(gibibytes) ?? 0)),
                ("Status", .string(status)),
                ("CreationTime", .string(cloudTime(disk.creationTime))),
                ("Remark", .string("")),
                ("Tags", .array([])),
            ])
        }
        return .object(paging.fields(total: disks.count) + [("Disks", .array(items))])
    }
}
