import Foundation
/// One HTTP request as the API sees it, whatever server carried it: what the signatures
/// cover, nothing else.
public struct APIRequest: Sendable {
    /// Upper case: `POST`, `GET`, `DELETE`, `PUT`.
    public var method: String
    /// The path as sent, percent-encoded (`/v1.0/local/clusters/c-1/index_snapshots`).
    public var path: String
    /// What follows `?`, as sent.
    public var rawQuery: String
    /// Names in lower case, in the order received.
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(method: String, path: String, rawQuery: String, headers: [(name: String, value: String)], body: [UInt8]) {
        self.method = method.uppercased()
        self.path = path
        self.rawQuery = rawQuery
        self.headers = headers.map { ($0.name.lowercased(), $0.value) }
        self.body = body
    }

    /// The first value of a header (name in any case).
    public func header(_ name: String) -> String? {
        let wanted = name.lowercased()
        return headers.first { $0.name == wanted }?.value
    }

    /// Every value of a header, in the order received.
    public func headerValues(_ name: String) -> [String] {
        let wanted = name.lowercased()
        return headers.filter { $0.name == wanted }.map(\.value)
    }

    /// The query's items, decoded (`+` is a space, as in a form).
    public var queryItems: [(String, String)] { FormEncoding.decode(rawQuery) }

    /// The parameters of an RPC-style call: the query's, then a form body's.
    public var parameters: [(String, String)] {
        var items = queryItems
        if header("content-type")?.lowercased().hasPrefix("application/x-www-form-urlencoded") == true {
            items += FormEncoding.decode(String(decoding: body, as: UTF8.self))
        }
        return items
    }
}

/// `application/x-www-form-urlencoded` and RFC 3986 percent-encoding, as the signatures
/// canonicalize them.
public enum FormEncoding {
    public static func decode(_ text: String) -> [(String, String)] {
        guard !text.isEmpty else { return [] }
        return text.split(separator: "&", omittingEmptySubsequences: true).map { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (percentDecode(parts[0]), parts.count > 1 ? percentDecode(parts[1]) : "")
        }
    }

    /// A path's `%XX` to bytes (`+` stays: it is a space only in a query).
    public static func percentDecodePath(_ text: String) -> String {
        percentDecode(Substring(text.replacingOccurrences(of: "+", with: "%2B")))
    }

    /// `%XX` to its byte and `+` to a space; a malformed escape stays as it is (the
    /// signature over the decoded value then fails rather than anything guessing).
    public static func percentDecode(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%"), iterator.count >= 2,
                      let high = hexValue(iterator[iterator.startIndex]), let low = hexValue(iterator[iterator.startIndex + 1]) {
                bytes.append(high << 4 | low)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// RFC 3986: every byte but the unreserved `A-Z a-z 0-9 - _ . ~` as `%XX` (upper case).
    public static func percentEncode(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let digits = Array("0123456789ABCDEF".unicodeScalars)
                out.unicodeScalars.append("%")
                out.unicodeScalars.append(digits[Int(byte >> 4)])
                out.unicodeScalars.append(digits[Int(byte & 15)])
            }
        }
        return out
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

extension String {
    /// Code point order (UTF-8 byte order), as the SDKs sort keys; not Swift's `<`, which
    /// orders by Unicode canonical equivalence.
    public func precedesInCodePoints(_ other: String) -> Bool { utf8.lexicographicallyPrecedes(other.utf8) }
}
