import DiskSnapFormat

/// Which cloud document's rules a repository follows (docs/RULES.md has the table).
public enum Profile: String, Sendable, Codable, CaseIterable {
    /// Alibaba ECS `CreateSnapshot` (English and Japanese documents).
    case ecs
    /// WUYING Workspace `CreateSnapshot`.
    case wuying
    /// Simple Application Server `CreateSnapshot`.
    case swas
    /// Huawei Cloud CSS "Creating a Snapshot".
    case css

    public var rules: RuleSet {
        switch self {
        case .ecs:
            RuleSet(profile: self, nameLength: 2...128, nameExtraCharacters: "_:-", nameAllowsCJK: true,
                    nameUniqueIgnoringCase: false, reservesAutoPrefix: true, refusesURLPrefix: true,
                    descriptionLength: 2...256, descriptionForbidden: "", snapshotsPerDisk: 64,
                    nameMalformedCode: "InvalidSnapshotName.Malformed", quotaCode: "QuotaExceed.Snapshot")
        case .wuying:
            RuleSet(profile: self, nameLength: 2...127, nameExtraCharacters: "_-", nameAllowsCJK: false,
                    nameUniqueIgnoringCase: false, reservesAutoPrefix: true, refusesURLPrefix: true,
                    descriptionLength: 0...128, descriptionForbidden: "", snapshotsPerDisk: 64,
                    nameMalformedCode: "InvalidSnapshotName.Malformed", quotaCode: "QuotaExceed.Snapshot")
        case .swas:
            RuleSet(profile: self, nameLength: 2...50, nameExtraCharacters: "_:-", nameAllowsCJK: true,
                    nameUniqueIgnoringCase: false, reservesAutoPrefix: true, refusesURLPrefix: true,
                    descriptionLength: 0...256, descriptionForbidden: "", snapshotsPerDisk: nil,
                    nameMalformedCode: "InvalidSnapshotName.ValueNotSupported", quotaCode: "SnapshotLimitExceed")
        case .css:
            RuleSet(profile: self, nameLength: 4...64, nameExtraCharacters: "_-", nameAllowsCJK: false,
                    nameUniqueIgnoringCase: true, reservesAutoPrefix: false, refusesURLPrefix: false,
                    descriptionLength: 0...256, descriptionForbidden: "!<>'=&\"", snapshotsPerDisk: nil,
                    nameMalformedCode: "InvalidSnapshotName.Malformed", quotaCode: "QuotaExceed.Snapshot")
        }
    }
}

/// The rules of one profile, as data; every check is a pure function of it.
public struct RuleSet: Sendable {
    public let profile: Profile
    public let nameLength: ClosedRange<Int>
    /// Characters allowed besides ASCII letters and digits.
    public let nameExtraCharacters: String
    /// Letters include CJK ideographs, kana and hangul (ECS "英文字や漢字").
    public let nameAllowsCJK: Bool
    public let nameUniqueIgnoringCase: Bool
    /// Names starting with `auto` are the automatic-snapshot runner's alone.
    public let reservesAutoPrefix: Bool
    public let refusesURLPrefix: Bool
    public let descriptionLength: ClosedRange<Int>
    public let descriptionForbidden: String
    /// nil: no per-disk limit in the document (the repository cap still applies).
    public let snapshotsPerDisk: Int?
    public let nameMalformedCode: String
    public let quotaCode: String

    /// Simple Application Server: snapshots per instance, and the account cap (3 x instances, at most 15).
    public static let snapshotsPerInstance = 3
    public static let accountCapCeiling = 15
    public static let maximumTags = 20

    /// Checks a user-given name. `automatic` is true only for the schedule runner's names.
    public func validateName(_ name: String, automatic: Bool = false) throws(CatalogError) {
        func fail(_ why: String) -> CatalogError {
            .invalid(nameMalformedCode, "snapshot name '\(name)' \(why) (profile \(profile.rawValue))")
        }
        guard nameLength.contains(name.count) else {
            throw fail("is \(name.count) characters; it must be \(nameLength.lowerBound) to \(nameLength.upperBound)")
        }
        let lower = name.lowercased()
        if refusesURLPrefix && (lower.hasPrefix("http://") || lower.hasPrefix("https://")) {
            throw fail("must not start with http:// or https://")
        }
        if reservesAutoPrefix && !automatic && lower.hasPrefix("auto") {
            throw fail("must not start with 'auto' (reserved for automatic snapshots)")
        }
        guard let first = name.unicodeScalars.first, isLetter(first) else { throw fail("must start with a letter") }
        for scalar in name.unicodeScalars where !(isLetter(scalar) || ("0"..."9").contains(scalar) || nameExtraCharacters.unicodeScalars.contains(scalar)) {
            throw fail("contains '\(scalar)'; allowed are letters, digits and \(nameExtraCharacters.map { "'\($0)'" }.joined(separator: ", "))")
        }
    }

    public func validateDescription(_ text: String) throws(CatalogError) {
        guard !text.isEmpty else { return }
        func fail(_ why: String) -> CatalogError {
            .invalid("InvalidDescription.Malformed", "description \(why) (profile \(profile.rawValue))")
        }
        guard descriptionLength.contains(text.count) else {
            throw fail("is \(text.count) characters; it must be \(descriptionLength.lowerBound == 0 ? "at most \(descriptionLength.upperBound)" : "\(descriptionLength.lowerBound) to \(descriptionLength.upperBound)")")
        }
        let lower = text.lowercased()
        if refusesURLPrefix && (lower.hasPrefix("http://") || lower.hasPrefix("https://")) {
            throw fail("must not start with http:// or https://")
        }
        if let bad = text.first(where: { descriptionForbidden.contains($0) }) {
            throw fail("contains '\(bad)'; these are not allowed: \(descriptionForbidden)")
        }
    }

    /// Names are unique per disk (CSS: without regard to case).
    public func sameName(_ a: String, _ b: String) -> Bool {
        nameUniqueIgnoringCase ? a.lowercased() == b.lowercased() : a == b
    }

    func isLetter(_ s: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(s) || ("A"..."Z").contains(s) || (nameAllowsCJK && Self.isCJK(s))
    }

    /// CJK ideographs (with extension A/B and compatibility), kana and hangul.
    static func isCJK(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0xF900...0xFAFF, 0x3040...0x30FF, 0xAC00...0xD7AF: true
        default: false
        }
    }
}

/// A snapshot tag. Keys 1-64 characters, not starting with `acs:` or `aliyun`, without
/// `http://` or `https://`; values 0-64 characters without them.
public struct Tag: Sendable, Codable, Equatable, Hashable {
    public var key: String
    public var value: String

    public init(key: String, value: String) throws(CatalogError) {
        let lowerKey = key.lowercased()
        guard (1...64).contains(key.count) else {
            throw .invalid("InvalidParameter.TagKey", "tag key '\(key)' is \(key.count) characters; it must be 1 to 64")
        }
        if lowerKey.hasPrefix("acs:") || lowerKey.hasPrefix("aliyun") {
            throw .invalid("InvalidParameter.TagKey", "tag key '\(key)' must not start with 'acs:' or 'aliyun'")
        }
        if lowerKey.contains("http://") || lowerKey.contains("https://") {
            throw .invalid("InvalidParameter.TagKey", "tag key '\(key)' must not contain http:// or https://")
        }
        guard value.count <= 64 else {
            throw .invalid("InvalidParameter.TagValue", "tag value '\(value)' is \(value.count) characters; it must be at most 64")
        }
        let lowerValue = value.lowercased()
        if lowerValue.contains("http://") || lowerValue.contains("https://") {
            throw .invalid("InvalidParameter.TagValue", "tag value '\(value)' must not contain http:// or https://")
        }
        self.key = key
        self.value = value
    }

    /// `KEY=VALUE` or `KEY` (empty value).
    public init(parsing text: String) throws(CatalogError) {
        if let eq = text.firstIndex(of: "=") {
            try self.init(key: String(text[..<eq]), value: String(text[text.index(after: eq)...]))
        } else {
            try self.init(key: text, value: "")
        }
    }

    public static func validate(_ tags: [Tag]) throws(CatalogError) {
        guard tags.count <= RuleSet.maximumTags else {
            throw .invalid("InvalidParameter.TagCount", "\(tags.count) tags given; at most \(RuleSet.maximumTags) are allowed")
        }
        var seen = Set<String>()
        for tag in tags where !seen.insert(tag.key).inserted {
            throw .invalid("InvalidParameter.TagKey", "tag key '\(tag.key)' is given twice")
        }
    }
}

/// `--client-token`: at most 64 printable ASCII characters.
public struct ClientToken: Sendable, Equatable {
    public let rawValue: String
    public init(_ text: String) throws(CatalogError) {
        guard (1...64).contains(text.utf8.count), text.unicodeScalars.allSatisfy({ $0.value >= 0x21 && $0.value <= 0x7e }) else {
            throw .invalid("InvalidClientToken.Malformed", "client token '\(text)' must be 1 to 64 printable ASCII characters")
        }
        rawValue = text
    }
}
