import Foundation
import DiskSnapAPIWire
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
        case "CreateAutoSnapshotPolicy": return try createAutoSnapshotPolicy(parameters)
        case "ModifyAutoSnapshotPolicyEx": return try modifyAutoSnapshotPolicy(parameters)
        case "ApplyAutoSnapshotPolicy": return try await applyAutoSnapshotPolicy(parameters)
        case "CancelAutoSnapshotPolicy": return try cancelAutoSnapshotPolicy(parameters)
        case "DescribeAutoSnapshotPolicyEx": return try describeAutoSnapshotPolicies(parameters)
        case "DeleteAutoSnapshotPolicy": return try deleteAutoSnapshotPolicy(parameters)
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
        let paging = try PageRequest(parameters)
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
        records = records.having(tags: tags)
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
            page = paging.slice(records)
            members = paging.fields(total: total) + [("NextToken", .string(""))]
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
        let paging = try PageRequest(parameters)
        let ids = try parameters.jsonList("DiskIds")
        var disks = try await core.disks()
        if let ids { disks = disks.filter { ids.contains($0.diskId.rawValue) } }
        if let instance = parameters["InstanceId"], !instance.isEmpty { disks = disks.filter { $0.instance == instance } }
        if let type = parameters["DiskType"], !type.isEmpty, type != "all" {
            guard type == "system" || type == "data" else { throw APIError.invalid("DiskType", "is '\(type)'; it must be system, data or all") }
            disks = disks.filter { $0.diskType == type }
        }
        var policyOf: [String: String] = [:]
        for policy in try service.policies.withLock({ _ in try service.policyStore.load() }) {
            for disk in policy.diskIds { policyOf[disk] = policy.autoSnapshotPolicyId }
        }
        return .object(paging.fields(total: disks.count) + [
            ("Disks", .object([("Disk", .array(paging.slice(disks).map { disk in
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
                    ("AutoSnapshotPolicyId", .string(policyOf[disk.diskId.rawValue] ?? "")),
                    ("EnableAutoSnapshot", .bool(policyOf[disk.diskId.rawValue] != nil)),
                    ("OperationLocks", .object([("OperationLock", .array(failure.map { [.object([("LockReason", .string("reset-failed: " + $0))])] } ?? []))])),
                ])
            }))])),
        ])
    }

    // MARK: Automatic-snapshot policies (their parameters are lower camel case; the legacy
    // client sends RegionId: both are read)

    static let maxPolicies = 100

    func policyFields(_ parameters: Parameters, into policy: inout AutoSnapshotPolicy) throws(APIError) {
        if let name = parameters["autoSnapshotPolicyName"] {
            guard (2...128).contains(name.count), let first = name.unicodeScalars.first, CharacterSet.letters.contains(first),
                  !name.lowercased().hasPrefix("http://"), !name.lowercased().hasPrefix("https://") else {
                throw APIError("InvalidAutoSnapshotPolicyName.Malformed", "policy name '\(name)' must be 2 to 128 characters starting with a letter", status: 400)
            }
            policy.autoSnapshotPolicyName = name
        }
        if parameters["timePoints"] != nil {
            let hours = try parameters.jsonList("timePoints", limit: 24) ?? []
            guard !hours.isEmpty, hours.allSatisfy({ Int($0).map { (0...23).contains($0) } == true }) else {
                throw APIError("InvalidTimePoints.Malformed", "timePoints must be a JSON array of hours \"0\" to \"23\"", status: 400)
            }
            policy.timePoints = Array(Set(hours.compactMap { Int($0) })).sorted()
        }
        if parameters["repeatWeekdays"] != nil {
            let days = try parameters.jsonList("repeatWeekdays", limit: 7) ?? []
            guard !days.isEmpty, days.allSatisfy({ Int($0).map { (1...7).contains($0) } == true }) else {
                throw APIError("InvalidRepeatWeekdays.Malformed", "repeatWeekdays must be a JSON array of days \"1\" (Monday) to \"7\" (Sunday)", status: 400)
            }
            policy.repeatWeekdays = Array(Set(days.compactMap { Int($0) })).sorted()
        }
        if let text = parameters["retentionDays"] {
            guard let days = Int(text), days == -1 || (1...65536).contains(days) else {
                throw APIError("InvalidRetentionDays.Malformed", "retentionDays '\(text)' must be -1 (keep) or 1 to 65536", status: 400)
            }
            policy.retentionDays = days
        }
    }

    func withPolicies<T>(_ body: (inout [AutoSnapshotPolicy]) throws -> T) throws -> T {
        try service.policies.withLock { _ in
            var all = try service.policyStore.load()
            let before = all
            let result = try body(&all)
            if all != before { try service.policyStore.save(all) }
            return result
        }
    }

    func policyIndex(_ all: [AutoSnapshotPolicy], _ parameters: Parameters) throws -> Int {
        guard let id = parameters["autoSnapshotPolicyId"] ?? parameters["AutoSnapshotPolicyId"], !id.isEmpty else { throw APIError.missing("autoSnapshotPolicyId") }
        guard let i = all.firstIndex(where: { $0.autoSnapshotPolicyId == id }) else {
            throw APIError("InvalidAutoSnapshotPolicyId.NotFound", "the automatic snapshot policy \(id) does not exist", status: 404)
        }
        return i
    }

    func createAutoSnapshotPolicy(_ parameters: Parameters) throws -> APIValue {
        try checkRegion(parameters, required: true)
        for name in ["timePoints", "repeatWeekdays", "retentionDays"] where parameters[name] == nil { throw APIError.missing(name) }
        var policy = AutoSnapshotPolicy(autoSnapshotPolicyId: "sp-" + String(SnapshotID.generate().rawValue.dropFirst(2)),
                                        autoSnapshotPolicyName: "", timePoints: [], repeatWeekdays: [], retentionDays: -1,
                                        creationTime: ISOTime.now())
        try policyFields(parameters, into: &policy)
        return try withPolicies { all in
            guard all.count < Self.maxPolicies else {
                throw APIError("QuotaExceed.AutoSnapshotPolicy", "there are \(all.count) automatic snapshot policies; at most \(Self.maxPolicies)", status: 403)
            }
            all.append(policy)
            return .object([("AutoSnapshotPolicyId", .string(policy.autoSnapshotPolicyId))])
        }
    }

    func modifyAutoSnapshotPolicy(_ parameters: Parameters) throws -> APIValue {
        try checkRegion(parameters, required: true)
        return try withPolicies { all in
            let i = try policyIndex(all, parameters)
            try policyFields(parameters, into: &all[i])
            return .object([])
        }
    }

    /// A disk has one policy at most: applying another moves it. From now on: the time points
    /// already past are not run late.
    func applyAutoSnapshotPolicy(_ parameters: Parameters) async throws -> APIValue {
        try checkRegion(parameters, required: true)
        guard let ids = try parameters.jsonList("diskIds") ?? parameters.jsonList("DiskIds"), !ids.isEmpty else { throw APIError.missing("diskIds") }
        for id in ids { _ = try core.disk(id) }
        return try withPolicies { all in
            let i = try policyIndex(all, parameters)
            let start = ISOTime.format(AutoSchedule.now())
            for j in all.indices where j != i { all[j].diskIds.removeAll { ids.contains($0) } }
            for id in ids where !all[i].diskIds.contains(id) {
                all[i].diskIds.append(id)
                all[i].lastRun[id] = start
            }
            return .object([])
        }
    }

    func cancelAutoSnapshotPolicy(_ parameters: Parameters) throws -> APIValue {
        try checkRegion(parameters, required: true)
        guard let ids = try parameters.jsonList("diskIds") ?? parameters.jsonList("DiskIds"), !ids.isEmpty else { throw APIError.missing("diskIds") }
        return try withPolicies { all in
            for j in all.indices {
                all[j].diskIds.removeAll { ids.contains($0) }
                for id in ids { all[j].lastRun[id] = nil; all[j].lastError[id] = nil }
            }
            return .object([])
        }
    }

    func deleteAutoSnapshotPolicy(_ parameters: Parameters) throws -> APIValue {
        try checkRegion(parameters, required: true)
        return try withPolicies { all in
            all.remove(at: try policyIndex(all, parameters))
            return .object([])
        }
    }

    func describeAutoSnapshotPolicies(_ parameters: Parameters) throws -> APIValue {
        try checkRegion(parameters, required: true)
        let paging = try PageRequest(parameters)
        var all = try service.policies.withLock { _ in try service.policyStore.load() }
        if let id = parameters["AutoSnapshotPolicyId"], !id.isEmpty { all = all.filter { $0.autoSnapshotPolicyId == id } }
        if let name = parameters["AutoSnapshotPolicyName"], !name.isEmpty { all = all.filter { $0.autoSnapshotPolicyName == name } }
        func jsonStrings(_ values: [Int]) -> String { "[" + values.map { "\"\($0)\"" }.joined(separator: ",") + "]" }
        return .object(paging.fields(total: all.count) + [
            ("AutoSnapshotPolicies", .object([("AutoSnapshotPolicy", .array(paging.slice(all).map { policy in
                .object([
                    ("AutoSnapshotPolicyId", .string(policy.autoSnapshotPolicyId)),
                    ("AutoSnapshotPolicyName", .string(policy.autoSnapshotPolicyName)),
                    ("RegionId", .string(service.settings.region)),
                    ("TimePoints", .string(jsonStrings(policy.timePoints))),
                    ("RepeatWeekdays", .string(jsonStrings(policy.repeatWeekdays))),
                    ("RetentionDays", .int(policy.retentionDays)),
                    ("DiskNums", .int(policy.diskIds.count)),
                    ("VolumeNums", .int(0)),
                    ("Status", .string("Normal")),
                    ("CreationTime", .string(cloudTime(policy.creationTime))),
                    ("EnableCrossRegionCopy", .bool(false)),
                    ("Type", .string("Custom")),
                    ("Tags", .object([("Tag", .array([]))])),
                ])
            }))])),
        ])
    }
}
