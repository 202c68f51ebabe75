/// The little XML our peers speak: libvirt's domains, checkpoints and backup jobs, S3's
/// listings and errors. Elements, attributes and text as machines write them (no DTDs; a
/// namespace prefix is part of the name). Pure: unit-tested in `LibvirtXMLTests`.
public struct XMLTree: Sendable, Equatable {
    public var name: String
    public var attributes: [String: String]
    public var children: [XMLTree]
    public var text: String

    public func child(_ name: String) -> XMLTree? { children.first { $0.name == name } }
    public func all(_ name: String) -> [XMLTree] { children.filter { $0.name == name } }

    /// Parses a document; nil when it is not well formed enough to trust.
    public static func parse(_ document: String) -> XMLTree? {
        var parser = Parser(bytes: Array(document.utf8))
        return parser.document()
    }

    /// `value` escaped for an attribute in single quotes or for text.
    public static func escape(_ value: String) -> String {
        var out = ""
        for character in value {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "'": out += "&apos;"
            case "\"": out += "&quot;"
            default: out.append(character)
            }
        }
        return out
    }

    private struct Parser {
        let bytes: [UInt8]
        var at = 0

        mutating func document() -> XMLTree? {
            var root: XMLTree?
            var stack: [XMLTree] = []
            while at < bytes.count {
                if bytes[at] != UInt8(ascii: "<") {
                    let start = at
                    while at < bytes.count, bytes[at] != UInt8(ascii: "<") { at += 1 }
                    if !stack.isEmpty { stack[stack.count - 1].text += Self.unescape(String(decoding: bytes[start..<at], as: UTF8.self)) }
                    continue
                }
                if starts(with: "<!--") {
                    guard let end = find("-->", from: at + 4) else { return nil }
                    at = end + 3
                    continue
                }
                if starts(with: "<?") || starts(with: "<!") {
                    guard let end = find(">", from: at) else { return nil }
                    at = end + 1
                    continue
                }
                if starts(with: "</") {
                    guard let end = find(">", from: at) else { return nil }
                    let name = String(decoding: bytes[(at + 2)..<end], as: UTF8.self).trimmingSpaces()
                    at = end + 1
                    guard let open = stack.popLast(), open.name == name else { return nil }
                    if stack.isEmpty { root = open } else { stack[stack.count - 1].children.append(open) }
                    continue
                }
                guard let (element, selfClosing) = tag() else { return nil }
                if selfClosing {
                    if stack.isEmpty { root = element } else { stack[stack.count - 1].children.append(element) }
                } else {
                    stack.append(element)
                }
            }
            return stack.isEmpty ? root : nil
        }

        /// `<name a='1' b="2">` or `<name .../>` at `at`.
        mutating func tag() -> (XMLTree, Bool)? {
            at += 1
            let nameStart = at
            while at < bytes.count, !Self.isSpace(bytes[at]), bytes[at] != UInt8(ascii: ">"), bytes[at] != UInt8(ascii: "/") { at += 1 }
            let name = String(decoding: bytes[nameStart..<at], as: UTF8.self)
            guard !name.isEmpty else { return nil }
            var attributes: [String: String] = [:]
            while true {
                while at < bytes.count, Self.isSpace(bytes[at]) { at += 1 }
                guard at < bytes.count else { return nil }
                if bytes[at] == UInt8(ascii: ">") { at += 1; return (XMLTree(name: name, attributes: attributes, children: [], text: ""), false) }
                if bytes[at] == UInt8(ascii: "/") {
                    guard at + 1 < bytes.count, bytes[at + 1] == UInt8(ascii: ">") else { return nil }
                    at += 2
                    return (XMLTree(name: name, attributes: attributes, children: [], text: ""), true)
                }
                let keyStart = at
                while at < bytes.count, bytes[at] != UInt8(ascii: "="), !Self.isSpace(bytes[at]), bytes[at] != UInt8(ascii: ">") { at += 1 }
                let key = String(decoding: bytes[keyStart..<at], as: UTF8.self)
                while at < bytes.count, Self.isSpace(bytes[at]) { at += 1 }
                guard !key.isEmpty, at < bytes.count, bytes[at] == UInt8(ascii: "=") else { return nil }
                at += 1
                while at < bytes.count, Self.isSpace(bytes[at]) { at += 1 }
                guard at < bytes.count, bytes[at] == UInt8(ascii: "'") || bytes[at] == UInt8(ascii: "\"") else { return nil }
                let quote = bytes[at]
                at += 1
                let valueStart = at
                while at < bytes.count, bytes[at] != quote { at += 1 }
                guard at < bytes.count else { return nil }
                attributes[key] = Self.unescape(String(decoding: bytes[valueStart..<at], as: UTF8.self))
                at += 1
            }
        }

        func starts(with prefix: String) -> Bool {
            let p = Array(prefix.utf8)
            return at + p.count <= bytes.count && Array(bytes[at..<(at + p.count)]) == p
        }

        func find(_ needle: String, from: Int) -> Int? {
            let n = Array(needle.utf8)
            var i = from
            while i + n.count <= bytes.count {
                if bytes[i] == n[0], Array(bytes[i..<(i + n.count)]) == n { return i }
                i += 1
            }
            return nil
        }

        static func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D }

        static func unescape(_ text: String) -> String {
            guard text.contains("&") else { return text }
            var out = ""
            var rest = Substring(text)
            while let amp = rest.firstIndex(of: "&") {
                out += rest[..<amp]
                guard let semi = rest[amp...].firstIndex(of: ";") else { out += rest[amp...]; return out }
                let entity = rest[rest.index(after: amp)..<semi]
                switch entity {
                case "amp": out += "&"
                case "lt": out += "<"
                case "gt": out += ">"
                case "apos": out += "'"
                case "quot": out += "\""
                default:
                    if entity.hasPrefix("#x"), let code = UInt32(entity.dropFirst(2), radix: 16), let scalar = Unicode.Scalar(code) {
                        out.unicodeScalars.append(scalar)
                    } else if entity.hasPrefix("#"), let code = UInt32(entity.dropFirst()), let scalar = Unicode.Scalar(code) {
                        out.unicodeScalars.append(scalar)
                    } else {
                        out += rest[amp...semi]
                    }
                }
                rest = rest[rest.index(after: semi)...]
            }
            return out + rest
        }
    }
}

private extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\n" || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\n" || l == "\t" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}

