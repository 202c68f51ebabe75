import Crypto
import Foundation

/// AWS Signature Version 4 (docs/DESIGN.md, "S3"): the canonical request, the string to
/// sign and the `Authorization` header, as the AWS documentation defines them and its
/// published test suite checks (`Tests/DiskSnapTests/SigV4Tests.swift` runs all of it).
/// Pure: the clock and the credentials are arguments. Our own signer, not libcurl's
/// (`CURLOPT_AWS_SIGV4` in curl 7.88 does not sort query parameters, and mishandles `?delete`).
public struct SigV4Credentials: Sendable, Equatable {
    public var accessKeyId: String
    public var secretAccessKey: String
    public var sessionToken: String?

    public init(accessKeyId: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyId = accessKeyId
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }
}

public struct SigV4Request: Sendable {
    public var method: String
    /// The path as sent, unencoded (`/bucket/packs/ab.pack`); encoded here.
    public var path: String
    /// Query parameters, unencoded (`("list-type", "2")`; `("delete", "")` for `?delete`).
    public var query: [(String, String)]
    /// Every header to sign (`Host` among them), as sent.
    public var headers: [(String, String)]
    /// Hex SHA-256 of the body (S3 also sends it as `x-amz-content-sha256`).
    public var payloadHash: String

    public init(method: String, path: String, query: [(String, String)] = [], headers: [(String, String)], payloadHash: String) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.payloadHash = payloadHash
    }
}

public enum SigV4 {
    public static let algorithm = "AWS4-HMAC-SHA256"
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    public struct Signature: Sendable, Equatable {
        public var canonicalRequest: String
        public var stringToSign: String
        public var authorization: String
        public var signature: String
    }

    /// Signs `request` at `amzDate` (`20150830T123600Z`, also sent as `X-Amz-Date`).
    /// `normalizePath`: collapse `//`, `.` and `..` as every service but S3 does (S3 signs
    /// the path as it is).
    public static func sign(_ request: SigV4Request, credentials: SigV4Credentials, region: String, service: String,
                            amzDate: String, normalizePath: Bool = false) -> Signature {
        let date = String(amzDate.prefix(8))
        let scope = "\(date)/\(region)/\(service)/aws4_request"
        let (canonicalHeaders, signedHeaders) = canonical(headers: request.headers)
        let canonicalRequest = [
            request.method,
            canonicalURI(request.path, normalize: normalizePath),
            canonicalQuery(request.query),
            canonicalHeaders,
            signedHeaders,
            request.payloadHash,
        ].joined(separator: "\n")
        let stringToSign = [algorithm, amzDate, scope, hex(SHA256.hash(data: Array(canonicalRequest.utf8)))].joined(separator: "\n")
        var key = SymmetricKey(data: Array("AWS4\(credentials.secretAccessKey)".utf8))
        for part in [date, region, service, "aws4_request"] {
            key = SymmetricKey(data: Array(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key)))
        }
        let signature = hex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: key))
        let authorization = "\(algorithm) Credential=\(credentials.accessKeyId)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
        return Signature(canonicalRequest: canonicalRequest, stringToSign: stringToSign, authorization: authorization, signature: signature)
    }

    /// `20150830T123600Z` for a moment.
    public static func amzDate(_ date: Date) -> String {
        var time = time_t(date.timeIntervalSince1970)
        var parts = tm()
        gmtime_r(&time, &parts)
        return String(format: "%04d%02d%02dT%02d%02d%02dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec)
    }

    /// RFC 3986 percent-encoding of everything but the unreserved characters (and `/` when
    /// `keepSlash`), upper-case hex, over the UTF-8 bytes.
    public static func encode(_ text: String, keepSlash: Bool) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: "/") where keepSlash:
                out.append("/")
            default:
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }

    static func canonicalURI(_ path: String, normalize: Bool) -> String {
        var text = path.isEmpty ? "/" : path
        if normalize {
            var parts: [Substring] = []
            for part in text.split(separator: "/", omittingEmptySubsequences: true) {
                if part == "." { continue }
                if part == ".." { _ = parts.popLast(); continue }
                parts.append(part)
            }
            let trailing = text.hasSuffix("/") && !parts.isEmpty
            text = "/" + parts.joined(separator: "/") + (trailing ? "/" : "")
        }
        return encode(text, keepSlash: true)
    }

    static func canonicalQuery(_ query: [(String, String)]) -> String {
        let encoded: [(key: String, value: String)] = query.map { (encode($0.0, keepSlash: false), encode($0.1, keepSlash: false)) }
        let sorted = encoded.sorted { (a, b) -> Bool in a.key == b.key ? a.value < b.value : a.key < b.key }
        return sorted.map { "\($0.key)=\($0.value)" }.joined(separator: "&")
    }

    /// Lower-case names, sorted; values trimmed, inner runs of spaces made one; repeated
    /// names joined with `,` in the order sent.
    static func canonical(headers: [(String, String)]) -> (String, String) {
        var values: [String: [String]] = [:]
        for (name, value) in headers {
            let collapsed = value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
                .trimmingCharacters(in: .whitespaces)
            values[name.lowercased(), default: []].append(collapsed)
        }
        let names = values.keys.sorted()
        let canonical = names.map { "\($0):\(values[$0]!.joined(separator: ","))\n" }.joined()
        return (canonical, names.joined(separator: ";"))
    }

    /// Hex SHA-256 of a body.
    public static func payloadHash(_ body: [UInt8]) -> String { hex(SHA256.hash(data: body)) }

    public static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        digest.map { String(format: "%02x", $0) }.joined()
    }
}
