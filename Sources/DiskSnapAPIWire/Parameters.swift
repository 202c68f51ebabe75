import Foundation

/// The parameters of one call, with the documents' checks: required, integer ranges, JSON
/// lists, `Tag.N.Key` lists. Every failure names the parameter.
public struct Parameters: Sendable {
    public let items: [(String, String)]

    public init(_ items: [(String, String)]) { self.items = items }

    public subscript(_ name: String) -> String? { items.last { $0.0 == name }?.1 }

    public func required(_ name: String) throws(APIError) -> String {
        guard let value = self[name], !value.isEmpty else { throw APIError.missing(name) }
        return value
    }

    public func int(_ name: String, default fallback: Int, range: ClosedRange<Int>) throws(APIError) -> Int {
        guard let text = self[name], !text.isEmpty else { return fallback }
        guard let value = Int(text), range.contains(value) else {
            throw APIError.invalid(name, "is '\(text)'; it must be an integer from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    public func bool(_ name: String) throws(APIError) -> Bool? {
        guard let text = self[name], !text.isEmpty else { return nil }
        switch text.lowercased() {
        case "true": return true
        case "false": return false
        default: throw APIError.invalid(name, "is '\(text)'; it must be true or false")
        }
    }

    /// A list given as a JSON array of strings (`SnapshotIds=["s-1","s-2"]`), at most `limit`.
    public func jsonList(_ name: String, limit: Int = 100) throws(APIError) -> [String]? {
        guard let text = self[name], !text.isEmpty else { return nil }
        guard let list = try? JSONDecoder().decode([String].self, from: Data(text.utf8)) else {
            throw APIError.invalid(name, "is not a JSON array of strings such as [\"s-1\",\"s-2\"]")
        }
        guard list.count <= limit else { throw APIError.invalid(name, "lists \(list.count) items; at most \(limit)") }
        return list
    }

    /// `Tag.1.Key`, `Tag.1.Value`, ... (N from 1 to 20, in N's order).
    public func tags(_ prefix: String = "Tag") throws(APIError) -> [(key: String, value: String)] {
        var byIndex: [Int: (key: String?, value: String?)] = [:]
        for (name, value) in items where name.hasPrefix(prefix + ".") {
            let parts = name.split(separator: ".")
            guard parts.count == 3, let n = Int(parts[1]), (1...20).contains(n), parts[2] == "Key" || parts[2] == "Value" else {
                throw APIError.invalid(name, "is not \(prefix).N.Key or \(prefix).N.Value with N from 1 to 20")
            }
            if parts[2] == "Key" { byIndex[n, default: (nil, nil)].key = value } else { byIndex[n, default: (nil, nil)].value = value }
        }
        return try byIndex.keys.sorted().map { n throws(APIError) in
            guard let key = byIndex[n]!.key, !key.isEmpty else { throw APIError.missing("\(prefix).\(n).Key") }
            return (key, byIndex[n]!.value ?? "")
        }
    }
}
