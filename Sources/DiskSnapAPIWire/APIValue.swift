import Foundation
import DiskSnapSys

/// A response body as the documents give it: objects keep their members' order, so that a
/// JSON answer and its XML form (`Format=XML`) come from one value.
public indirect enum APIValue: Sendable, Equatable {
    case string(String)
    case int(Int64)
    case bool(Bool)
    case array([APIValue])
    case object([(String, APIValue)])

    public static func == (a: APIValue, b: APIValue) -> Bool {
        switch (a, b) {
        case (.string(let x), .string(let y)): x == y
        case (.int(let x), .int(let y)): x == y
        case (.bool(let x), .bool(let y)): x == y
        case (.array(let x), .array(let y)): x == y
        case (.object(let x), .object(let y)): x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: false
        }
    }

    public static func int(_ value: Int) -> APIValue { .int(Int64(value)) }
    public static func int(_ value: UInt64) -> APIValue { .int(Int64(clamping: value)) }

    public subscript(_ key: String) -> APIValue? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.0 == key }?.1
    }

    // MARK: JSON

    public var json: String {
        var out = ""
        writeJSON(into: &out)
        return out
    }

    private func writeJSON(into out: inout String) {
        switch self {
        case .string(let text): Self.writeJSONString(text, into: &out)
        case .int(let n): out += String(n)
        case .bool(let b): out += b ? "true" : "false"
        case .array(let items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                item.writeJSON(into: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (i, (key, value)) in members.enumerated() {
                if i > 0 { out += "," }
                Self.writeJSONString(key, into: &out)
                out += ":"
                value.writeJSON(into: &out)
            }
            out += "}"
        }
    }

    private static func writeJSONString(_ text: String, into out: inout String) {
        out += "\""
        // Most strings need no escape: appended whole.
        if !text.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            out += text
            out += "\""
            return
        }
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    // MARK: XML (the legacy SDKs' `Format=XML`)

    /// `<Root>...</Root>`: an array's items repeat their parent's element, as Alibaba's
    /// XML answers do (`<Snapshots><Snapshot>..</Snapshot><Snapshot>..</Snapshot></Snapshots>`).
    public func xml(root: String) -> String {
        var out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
        writeXML(name: root, into: &out)
        return out
    }

    private func writeXML(name: String, into out: inout String) {
        switch self {
        case .array(let items):
            for item in items { item.writeXML(name: name, into: &out) }
        case .object(let members):
            out += "<\(name)>"
            for (key, value) in members { value.writeXML(name: key, into: &out) }
            out += "</\(name)>"
        case .string(let text): out += "<\(name)>\(XMLTree.escape(text))</\(name)>"
        case .int(let n): out += "<\(name)>\(n)</\(name)>"
        case .bool(let b): out += "<\(name)>\(b)</\(name)>"
        }
    }
}
