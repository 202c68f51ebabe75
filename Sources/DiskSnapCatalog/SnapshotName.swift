/// A snapshot name under the ECS rules: 2-128 characters, starting with a letter (ASCII or
/// CJK), then letters, digits, `_`, `:`, `-`; not starting with `auto` (reserved for
/// automatic snapshots) nor `http://` / `https://`. The other profiles' rules are issue #3.
public struct SnapshotName: Sendable, Equatable, CustomStringConvertible {
    public static let lengthLimits = 2...128
    public let rawValue: String

    public init(_ text: String) throws(CatalogError) {
        let count = text.count
        guard Self.lengthLimits.contains(count) else {
            throw .malformedName("snapshot name '\(text)' is \(count) characters; it must be 2 to 128")
        }
        let lower = text.lowercased()
        if lower.hasPrefix("http://") || lower.hasPrefix("https://") {
            throw .malformedName("snapshot name '\(text)' must not start with http:// or https://")
        }
        if lower.hasPrefix("auto") {
            throw .malformedName("snapshot name '\(text)' must not start with 'auto' (reserved for automatic snapshots)")
        }
        guard let first = text.unicodeScalars.first, Self.isLetter(first) else {
            throw .malformedName("snapshot name '\(text)' must start with a letter")
        }
        for scalar in text.unicodeScalars where !(Self.isLetter(scalar) || ("0"..."9").contains(scalar) || "_:-".unicodeScalars.contains(scalar)) {
            throw .malformedName("snapshot name '\(text)' contains '\(scalar)'; allowed are letters, digits, '_', ':' and '-'")
        }
        rawValue = text
    }

    static func isLetter(_ s: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(s) || ("A"..."Z").contains(s) || isCJK(s)
    }

    static func isCJK(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0xF900...0xFAFF, 0x3040...0x30FF, 0xAC00...0xD7AF: true
        default: false
        }
    }

    public var description: String { rawValue }
}

/// A description: empty, or 2-256 characters not starting with `http://` / `https://`.
public struct SnapshotDescription: Sendable, Equatable {
    public static let lengthLimits = 2...256
    public let rawValue: String

    public init(_ text: String) throws(CatalogError) {
        if !text.isEmpty {
            guard Self.lengthLimits.contains(text.count) else {
                throw .malformedDescription("description is \(text.count) characters; it must be 2 to 256")
            }
            let lower = text.lowercased()
            if lower.hasPrefix("http://") || lower.hasPrefix("https://") {
                throw .malformedDescription("description must not start with http:// or https://")
            }
        }
        rawValue = text
    }
}
