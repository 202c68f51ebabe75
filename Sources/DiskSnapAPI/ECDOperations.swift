import DiskSnapAPIWire
import DiskSnapFormat
import DiskSnapCatalog
import DiskSnapEngine

/// WUYING Workspace (ECD, API version 2020-09-30): a cloud computer (`DesktopId`) is an
/// instance, and a snapshot names its disk by type (`SourceDiskType`: system or data).
/// Lists are bare, upper-case enumerations (`ACCOMPLISHED`, `SYSTEM`), token paging only.
struct ECDOperations {
    static let version = "2020-09-30"
    let service: APIService
    var core: SnapshotOperations { SnapshotOperations(service: service) }

    func perform(_ action: String, _ parameters: Parameters) async throws -> APIValue {
        try core.checkRegion(parameters, required: true)
        switch action {
        case "CreateSnapshot":
            let disk = try await desktopDisk(try parameters.required("DesktopId"), type: try parameters.required("SourceDiskType"))
            var request = CreateRequest(source: disk.diskId.rawValue, name: try parameters.required("SnapshotName"))
            request.description = parameters["Description"] ?? ""
            return .object([("SnapshotId", .string(try await core.create(request).rawValue))])
        case "DescribeSnapshots": return try await describeSnapshots(parameters)
        case "DeleteSnapshot":
            let ids = try parameters.repeatList("SnapshotId")
            guard !ids.isEmpty else { throw APIError.missing("SnapshotId.1") }
            try await core.delete(ids)
            return .object([])
        case "ResetSnapshot":
            let id = try parameters.required("SnapshotId")
            _ = try parameters.bool("StopDesktop")
            guard let snapshotID = SnapshotID(id), let record = try await core.snapshots().first(where: { $0.snapshotId == snapshotID }),
                  let disk = record.sourceDiskId else {
                throw APIError("InvalidSnapshotId.NotFound", "the snapshot \(id) does not exist", status: 404)
            }
            try await core.reset(diskID: disk.rawValue, snapshotID: id, dryRun: false)
            return .object([])
        default: throw APIError.unsupportedOperation(action, Self.version)
        }
    }

    /// The desktop's one disk of that type (`system` or `data`, any case).
    func desktopDisk(_ desktop: String, type: String) async throws -> DiskRecord {
        let wanted = type.lowercased()
        guard DiskRegistry.diskTypes.contains(wanted) else {
            throw APIError.invalid("SourceDiskType", "is '\(type)'; it must be system or data")
        }
        let disks = try await core.disks().filter { $0.instance == desktop }
        guard !disks.isEmpty else {
            throw APIError("InvalidDesktopId.NotFound", "the cloud computer \(desktop) does not exist (no registered disk has it as its instance)", status: 404)
        }
        let matching = disks.filter { $0.diskType == wanted }
        guard matching.count == 1 else {
            throw APIError(matching.isEmpty ? "InvalidDiskId.NotFound" : "InvalidParameter.SourceDiskType",
                           "cloud computer \(desktop) has \(matching.count) \(wanted) disks; a snapshot by type needs exactly one",
                           status: matching.isEmpty ? 404 : 400)
        }
        return matching[0]
    }

    func describeSnapshots(_ parameters: Parameters) async throws -> APIValue {
        let maxResults = try parameters.int("MaxResults", default: 10, range: 1...100)
        let disks = try await core.disks()
        let instanceOf = Dictionary(uniqueKeysWithValues: disks.map { ($0.diskId, $0.instance ?? "") })
        var records = try await core.snapshots()
        if let desktop = parameters["DesktopId"], !desktop.isEmpty { records = records.filter { $0.sourceDiskId.flatMap { instanceOf[$0] } == desktop } }
        if let id = parameters["SnapshotId"], !id.isEmpty { records = records.filter { $0.snapshotId.rawValue == id } }
        if let name = parameters["SnapshotName"], !name.isEmpty { records = records.filter { $0.snapshotName == name } }
        if let type = parameters["SourceDiskType"], !type.isEmpty { records = records.filter { $0.sourceDiskType?.lowercased() == type.lowercased() } }
        if let type = parameters["SnapshotType"], !type.isEmpty {
            guard ["auto", "user"].contains(type.lowercased()) else { throw APIError.invalid("SnapshotType", "is '\(type)'; it must be AUTO or USER") }
            records = records.filter { $0.automatic == (type.lowercased() == "auto") }
        }
        let start: Int
        if let token = parameters["NextToken"], !token.isEmpty {
            guard let offset = Int(token), offset >= 0, offset <= records.count else {
                throw APIError("InvalidParameter.NextToken", "NextToken '\(token)' is not one this server gave", status: 400)
            }
            start = offset
        } else { start = 0 }
        let end = min(records.count, start + maxResults)
        let items: [APIValue] = records[start..<end].map { record in
            let status: String = switch record.status {
            case .progressing: "PROGRESSING"
            case .accomplished: "ACCOMPLISHED"
            case .failed, .damaged: "FAILED"
            }
            return .object([
                ("SnapshotId", .string(record.snapshotId.rawValue)),
                ("SnapshotName", .string(record.snapshotName)),
                ("Description", .string(record.description)),
                ("DesktopId", .string(record.sourceDiskId.flatMap { instanceOf[$0] } ?? "")),
                ("Status", .string(status)),
                ("Progress", .string(record.status == .accomplished ? "100%" : record.progress)),
                ("RemainTime", .int(record.status == .progressing ? -1 : 0)),
                ("SnapshotType", .string(record.automatic ? "AUTO" : "USER")),
                ("SourceDiskType", .string((record.sourceDiskType ?? "").uppercased())),
                ("SourceDiskSize", .string(String(gibibytes(record.sourceSize)))),
                ("CreationTime", .string(cloudTime(record.creationTime))),
            ])
        }
        return .object([("NextToken", .string(end < records.count ? String(end) : "")), ("Snapshots", .array(items))])
    }
}
