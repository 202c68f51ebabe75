import Foundation
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog
import DiskSnapEngine

/// ECS (API version 2014-05-26): the snapshot operations of its documents over the
/// repository. docs/API.md lists the parameters served and where they differ from the cloud.
struct ECSOperations {
    static let version = "2014-05-26"
    let service: APIService
    var core: SnapshotOperations { SnapshotOperations(service: service) }

    func perform(_ action: String, _ parameters: Parameters) async throws -> APIValue {
        switch action {
        case "CreateSnapshot": return try await createSnapshot(parameters)
        case "DescribeSnapshots": return try await describeSnapshots(parameters)
        case "DeleteSnapshot": return try await deleteSnapshot(parameters)
        case "DescribeDisks": return try await describeDisks(parameters)
        case "ModifySnapshotAttribute": return try await modifySnapshotAttribute(parameters)
        case "DescribeSnapshotsUsage": return try await describeSnapshotsUsage(parameters)
        case "ResetDisk": return try await resetDisk(parameters)
        default: throw APIError.unsupportedOperation(action, Self.version)
        }
    }

    func checkRegion(_ parameters: Parameters, required: Bool) throws(APIError) {
        try core.checkRegion(parameters, required: required)
    }

    // MARK: CreateSnapshot

    func createSnapshot(_ parameters: Parameters) async throws -> APIValue {
        try checkRegion(parameters, required: false)
        let disk = try core.disk(try parameters.required("DiskId"))
        var request = CreateRequest(source: disk.diskId.rawValue, name: try parameters.required("SnapshotName"))
        request.description = parameters["Description"] ?? ""
        request.tags = try parameters.tags().map { try Tag(key: $0.key, value: $0.value) }
        if let token = parameters["ClientToken"], !token.isEmpty { request.clientToken = try ClientToken(token) }
        let id = try await core.create(request)
        return .object([("SnapshotId", .string(id.rawValue))])
    }

    // MARK: DescribeSnapshots

    func describeSnapshots(_ parameters: Parameters) async throws -> APIValue {
        try checkRegion(parameters, required: true)
        let pageSize = try parameters.int("PageSize", default: 10, range: 1...100)
        let pageNumber = try parameters.int("PageNumber", default: 1, range: 1...Int(Int32.max))
        let maxResults = try parameters.int("MaxResults", default: 10, range: 10...100)
        let ids = try parameters.jsonList("SnapshotIds")
        let tags = try parameters.tags()
        var records = try await core.snapshots()
        if let diskID = parameters["DiskId"], !diskID.isEmpty { records = records.filter { $0.sourceDiskId?.rawValue == diskID } }
        if let instance = parameters["InstanceId"], !instance.isEmpty {
            let disks = Set(try await core.disks().filter { $0.instance == instance }.map(\.diskId))
            records = records.filter { $0.sourceDiskId.map(disks.contains) == true }
        }
        if let ids { records = records.filter { ids.contains($0.snapshotId.rawValue) } }
        if let name = parameters["SnapshotName"], !name.isEmpty { records = records.filter { $0.snapshotName == name } }
        if let status = parameters["Status"], !status.isEmpty, status != "all" {
            guard ["progressing", "accomplished", "failed"].contains(status) else {
                throw APIError.invalid("Status", "is '\(status)'; it must be progressing, accomplished, failed or all")
            }
            records = records.filter { $0.status.rawValue == status }
        }
        if let type = parameters["SnapshotType"], !type.isEmpty, type != "all" {
            guard type == "auto" || type == "user" else { throw APIError.invalid("SnapshotType", "is '\(type)'; it must be auto, user or all") }
            records = records.filter { $0.automatic == (type == "auto") }
        }
        if let type = parameters["SourceDiskType"], !type.isEmpty {
            guard ["system", "data"].contains(type.lowercased()) else { throw APIError.invalid("SourceDiskType", "is '\(type)'; it must be System or Data") }
            records = records.filter { $0.sourceDiskType?.lowercased() == type.lowercased() }
        }
        for tag in tags { records = records.filter { $0.tags.contains { $0.key == tag.key && (tag.value.isEmpty || $0.value == tag.value) } } }
        let total = records.count
        var page: ArraySlice<SnapshotRecord>
        var nextToken = ""
        var members: [(String, APIValue)] = []
        if parameters["NextToken"] != nil || parameters["MaxResults"] != nil {
            // Token paging: the token is the offset of the next item, as text.
            let start: Int
            if let token = parameters["NextToken"], !token.isEmpty {
                guard let offset = Int(token), offset >= 0, offset <= total else { throw APIError("InvalidParameter.NextToken", "NextToken '\(token)' is not one this server gave", status: 400) }
                start = offset
            } else { start = 0 }
            page = records[start..<min(total, start + maxResults)]
            if start + maxResults < total { nextToken = String(start + maxResults) }
            members = [("TotalCount", .int(total)), ("NextToken", .string(nextToken))]
        } else {
            page = DiskSnapAPI.page(records, number: pageNumber, size: pageSize)
            members = [("TotalCount", .int(total)), ("PageNumber", .int(pageNumber)), ("PageSize", .int(pageSize)), ("NextToken", .string(""))]
        }
        members.append(("Snapshots", .object([("Snapshot", .array(page.map(snapshot)))])))
        return .object(members)
    }

    func snapshot(_ record: SnapshotRecord) -> APIValue {
        let status = record.status == .damaged ? "failed" : record.status.rawValue
        return .object([
            ("SnapshotId", .string(record.snapshotId.rawValue)),
            ("SnapshotName", .string(record.snapshotName)),
            ("Description", .string(record.description)),
            ("Status", .string(status)),
            ("Progress", .string(record.status == .accomplished ? "100%" : record.progress)),
            ("Available", .bool(record.status == .accomplished)),
            ("CreationTime", .string(cloudTime(record.creationTime))),
            ("LastModifiedTime", .string(cloudTime(record.completionTime ?? record.creationTime))),
            ("SourceDiskId", .string(record.sourceDiskId?.rawValue ?? "")),
            ("SourceDiskSize", .string(String(gibibytes(record.sourceSize)))),
            ("SourceDiskType", .string(record.sourceDiskType.map { $0.prefix(1).uppercased() + $0.dropFirst() } ?? "")),
            ("SourceStorageType", .string("disk")),
            ("SnapshotType", .string(record.automatic ? "auto" : "user")),
            ("Category", .string("standard")),
            ("Encrypted", .bool(false)),
            ("Usage", .string("none")),
            ("RegionId", .string(service.settings.region)),
            ("RemainTime", .int(0)),
            ("Tags", .object([("Tag", .array(record.tags.map { .object([("TagKey", .string($0.key)), ("TagValue", .string($0.value))]) }))])),
        ])
    }

    // MARK: DeleteSnapshot

    func deleteSnapshot(_ parameters: Parameters) async throws -> APIValue {
        _ = try parameters.bool("Force")
        try await core.delete([try parameters.required("SnapshotId")])
        return .object([])
    }

    // MARK: ModifySnapshotAttribute

    func modifySnapshotAttribute(_ parameters: Parameters) async throws -> APIValue {
        let name = parameters["SnapshotName"].flatMap { $0.isEmpty ? nil : $0 }
        try await core.modify(try parameters.required("SnapshotId"), name: name, description: parameters["Description"])
        return .object([])
    }

    // MARK: ResetDisk

    func resetDisk(_ parameters: Parameters) async throws -> APIValue {
        try await core.reset(diskID: try parameters.required("DiskId"), snapshotID: try parameters.required("SnapshotId"),
                             dryRun: try parameters.bool("DryRun") ?? false)
        return .object([])
    }

    // MARK: DescribeSnapshotsUsage

    /// How many snapshots there are and the bytes they stored (each chunk counted once, by
    /// the snapshot that stored it first).
    func describeSnapshotsUsage(_ parameters: Parameters) async throws -> APIValue {
        try checkRegion(parameters, required: true)
        let records = try await core.snapshots()
        let live = records.filter { $0.status == .accomplished || $0.status == .progressing }
        return .object([("SnapshotCount", .int(live.count)), ("SnapshotSize", .int(live.reduce(UInt64(0)) { $0 + $1.bytesStoredNew }))])
    }

    // MARK: DescribeDisks

    func describeDisks(_ parameters: Parameters) async throws -> APIValue {
        try checkRegion(parameters, required: true)
        let pageSize = try parameters.int("PageSize", default: 10, range: 1...100)
        let pageNumber = try parameters.int("PageNumber", default: 1, range: 1...Int(Int32.max))
        let ids = try parameters.jsonList("DiskIds")
        var disks = try await core.disks()
        if let ids { disks = disks.filter { ids.contains($0.diskId.rawValue) } }
        if let instance = parameters["InstanceId"], !instance.isEmpty { disks = disks.filter { $0.instance == instance } }
        if let type = parameters["DiskType"], !type.isEmpty, type != "all" {
            guard type == "system" || type == "data" else { throw APIError.invalid("DiskType", "is '\(type)'; it must be system, data or all") }
            disks = disks.filter { $0.diskType == type }
        }
        return .object([
            ("TotalCount", .int(disks.count)), ("PageNumber", .int(pageNumber)), ("PageSize", .int(pageSize)),
            ("Disks", .object([("Disk", .array(page(disks, number: pageNumber, size: pageSize).map { disk in
                let (status, size, failure) = service.diskStatus(disk)
                return .object([
                    ("DiskId", .string(disk.diskId.rawValue)),
                    ("DiskName", .string(disk.diskName)),
                    ("Type", .string(disk.diskType)),
                    ("Size", .int(size.map(gibibytes) ?? 0)),
                    ("Status", .string(status)),
                    ("InstanceId", .string(disk.instance ?? "")),
                    ("RegionId", .string(service.settings.region)),
                    ("Category", .string("local")),
                    ("CreationTime", .string(cloudTime(disk.creationTime))),
                    ("OperationLocks", .object([("OperationLock", .array(failure.map { [.object([("LockReason", .string("reset-failed: " + $0))])] } ?? []))])),
                ])
            }))])),
        ])
    }
}
