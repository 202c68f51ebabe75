import Foundation
import Crypto
import DiskSnapFormat

/// Who signed a request, and with what: what the verifiers of the three signature schemes
/// the official SDKs use agree on. Verification is pure: the keys come in, a decision comes
/// out; the replay window is `ReplayGuard`'s.
public struct SignedCaller: Sendable, Equatable {
    public var accessKeyId: String
    /// The nonce the signature covers (none for Huawei's scheme, whose date is its only
    /// freshness).
    public var nonce: String?
    public var date: Date
}

public enum RequestSignature {
    /// How far a request's signed time may be from the server's clock: the documents' 15
    /// minutes.
    public static let allowedSkew: TimeInterval = 15 * 60

    // MARK: Alibaba Cloud ACS3-HMAC-SHA256 (the tea SDKs: alibabacloud-*)

    /// `Authorization: ACS3-HMAC-SHA256 Credential=ID,SignedHeaders=a;b,Signature=HEX`
    /// over the canonical request (method, path, sorted query, signed headers, the body's
    /// SHA-256 in `x-acs-content-sha256`).
    public static func verifyACS3(_ request: APIRequest, secret: (String) -> String?) throws(APIError) -> SignedCaller {
        guard let authorization = request.header("authorization") else {
            throw APIError("IncompleteSignature", "the request carries no Authorization header", status: 400)
        }
        let algorithm = "ACS3-HMAC-SHA256"
        guard authorization.hasPrefix(algorithm + " ") else {
            throw APIError("IncompleteSignature", "the Authorization header's algorithm is not \(algorithm) (ACS3-HMAC-SM3 and ACS3-RSA-SHA256 are not served)", status: 400)
        }
        var fields: [String: String] = [:]
        for part in authorization.dropFirst(algorithm.count + 1).split(separator: ",") {
            let pair = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1).map(String.init)
            if pair.count == 2 { fields[pair[0]] = pair[1] }
        }
        guard let accessKeyId = fields["Credential"], !accessKeyId.isEmpty,
              let signedHeadersText = fields["SignedHeaders"], let signature = fields["Signature"] else {
            throw APIError("IncompleteSignature", "the Authorization header lacks Credential, SignedHeaders or Signature", status: 400)
        }
        let signedHeaders = signedHeadersText.split(separator: ";").map { $0.lowercased() }
        for required in ["host", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256", "x-acs-action", "x-acs-version"]
            where !signedHeaders.contains(required) {
            throw APIError("IncompleteSignature", "the signature does not cover the \(required) header", status: 400)
        }
        guard signedHeaders == signedHeaders.sorted(by: { $0.precedesInCodePoints($1) }) else {
            throw APIError("IncompleteSignature", "SignedHeaders is not in sorted order", status: 400)
        }
        let bodyHash = SHA256.hash(data: request.body).hex
        guard request.header("x-acs-content-sha256")?.lowercased() == bodyHash else {
            throw APIError("SignatureDoesNotMatch", "x-acs-content-sha256 is not the SHA-256 of the body received", status: 400)
        }
        var canonicalHeaders = ""
        for name in signedHeaders {
            let values = request.headerValues(name)
            guard !values.isEmpty else {
                throw APIError("IncompleteSignature", "the signed header \(name) is not in the request", status: 400)
            }
            canonicalHeaders += name + ":" + values.map { $0.trimmingCharacters(in: .whitespaces) }.sorted(by: { $0.precedesInCodePoints($1) }).joined(separator: ",") + "\n"
        }
        let query = request.queryItems.sorted { $0.0.precedesInCodePoints($1.0) }
            .map { $0.0 + "=" + FormEncoding.percentEncode($0.1) }.joined(separator: "&")
        let path = request.path.isEmpty ? "/" : request.path
        let canonical = [request.method, path, query, canonicalHeaders, signedHeaders.joined(separator: ";"), bodyHash].joined(separator: "\n")
        let stringToSign = algorithm + "\n" + SHA256.hash(data: Array(canonical.utf8)).hex
        guard let key = secret(accessKeyId) else {
            throw APIError("InvalidAccessKeyId.NotFound", "the AccessKeyId \(accessKeyId) is not one of this server's keys", status: 404)
        }
        let expected = HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: SymmetricKey(data: Array(key.utf8)))
        guard constantTimeEqual(Array(signature.lowercased().utf8), Array(Data(expected).hex.utf8)) else {
            throw mismatch(stringToSign)
        }
        guard let dateText = request.header("x-acs-date"), let date = parseUTC(dateText) else {
            throw APIError("InvalidTimeStamp.Format", "x-acs-date is not a UTC time such as 2026-12-05T12:00:00Z", status: 400)
        }
        return SignedCaller(accessKeyId: accessKeyId, nonce: request.header("x-acs-signature-nonce"), date: date)
    }

    // MARK: Alibaba Cloud RPC signature version 1.0 (aliyun-python-sdk-core; tea's "v2")

    /// `Signature=` among the parameters: base64 HMAC-SHA1, keyed by `SECRET&`, over
    /// `METHOD&%2F&` and the percent-encoded, sorted parameters (query and form body).
    public static func verifyRPC(_ request: APIRequest, secret: (String) -> String?) throws(APIError) -> SignedCaller {
        let parameters = request.parameters
        func value(_ name: String) -> String? { parameters.first { $0.0 == name }?.1 }
        guard let signature = value("Signature"), let accessKeyId = value("AccessKeyId"),
              let nonce = value("SignatureNonce"), let timestamp = value("Timestamp") else {
            throw APIError("IncompleteSignature", "the request lacks Signature, AccessKeyId, SignatureNonce or Timestamp", status: 400)
        }
        guard value("SignatureMethod") == "HMAC-SHA1" else {
            throw APIError("IncompleteSignature", "SignatureMethod '\(value("SignatureMethod") ?? "")' is not served; use HMAC-SHA1", status: 400)
        }
        guard value("SignatureVersion") == "1.0" else {
            throw APIError("IncompleteSignature", "SignatureVersion '\(value("SignatureVersion") ?? "")' is not 1.0", status: 400)
        }
        let canonical = parameters.filter { $0.0 != "Signature" }
            .sorted { $0.0.precedesInCodePoints($1.0) }
            .map { FormEncoding.percentEncode($0.0) + "=" + FormEncoding.percentEncode($0.1) }
            .joined(separator: "&")
        let stringToSign = request.method + "&%2F&" + FormEncoding.percentEncode(canonical)
        guard let key = secret(accessKeyId) else {
            throw APIError("InvalidAccessKeyId.NotFound", "the AccessKeyId \(accessKeyId) is not one of this server's keys", status: 404)
        }
        let expected = HMAC<Insecure.SHA1>.authenticationCode(for: Array(stringToSign.utf8), using: SymmetricKey(data: Array((key + "&").utf8)))
        guard constantTimeEqual(Array(signature.utf8), Array(Data(expected).base64EncodedString().utf8)) else {
            throw mismatch(stringToSign)
        }
        guard let date = parseUTC(timestamp) else {
            throw APIError("InvalidTimeStamp.Format", "Timestamp '\(timestamp)' is not a UTC time such as 2026-12-05T12:00:00Z", status: 400)
        }
        return SignedCaller(accessKeyId: accessKeyId, nonce: nonce, date: date)
    }

    // MARK: Huawei Cloud SDK-HMAC-SHA256 (huaweicloudsdkcore)

    /// `Authorization: SDK-HMAC-SHA256 Access=ID, SignedHeaders=a;b, Signature=HEX` over the
    /// canonical request (method; the path decoded, each segment encoded again, with a
    /// trailing slash; the sorted query; the signed headers; the body's SHA-256) and
    /// `X-Sdk-Date`. A body the signature does not cover (`UNSIGNED-PAYLOAD`) is refused.
    /// The scheme has no nonce: the signature itself stands for one (see `ReplayGuard`).
    public static func verifyHuawei(_ request: APIRequest, secret: (String) -> String?) throws(APIError) -> SignedCaller {
        func refuse(_ why: String) -> APIError { APIError("APIGW.0301", "Incorrect IAM authentication information: \(why)", status: 401) }
        let algorithm = "SDK-HMAC-SHA256"
        guard let authorization = request.header("authorization"), authorization.hasPrefix(algorithm + " ") else {
            throw refuse("the request carries no \(algorithm) Authorization header")
        }
        var fields: [String: String] = [:]
        for part in authorization.dropFirst(algorithm.count + 1).split(separator: ",") {
            let pair = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1).map(String.init)
            if pair.count == 2 { fields[pair[0]] = pair[1] }
        }
        guard let accessKeyId = fields["Access"], !accessKeyId.isEmpty, let signedText = fields["SignedHeaders"],
              let signature = fields["Signature"] else {
            throw refuse("the Authorization header lacks Access, SignedHeaders or Signature")
        }
        let signedHeaders = signedText.split(separator: ";").map { $0.lowercased() }
        for required in ["host", "x-sdk-date"] where !signedHeaders.contains(required) {
            throw refuse("the signature does not cover the \(required) header")
        }
        var canonicalHeaders = ""
        for name in signedHeaders {
            guard let value = request.header(name) else { throw refuse("the signed header \(name) is not in the request") }
            canonicalHeaders += name + ":" + value.trimmingCharacters(in: .whitespaces) + "\n"
        }
        let payloadHash: String
        if request.body.isEmpty {
            payloadHash = SHA256.hash(data: []).hex
        } else if request.header("x-sdk-content-sha256") != nil {
            throw refuse("a body the signature does not cover (X-Sdk-Content-Sha256) is not accepted")
        } else {
            payloadHash = SHA256.hash(data: request.body).hex
        }
        var path = FormEncoding.percentDecodePath(request.path).split(separator: "/", omittingEmptySubsequences: false)
            .map { FormEncoding.percentEncode(String($0)) }.joined(separator: "/")
        if !path.hasSuffix("/") { path += "/" }
        let query = request.queryItems.sorted { $0.0 == $1.0 ? $0.1.precedesInCodePoints($1.1) : $0.0.precedesInCodePoints($1.0) }
            .map { FormEncoding.percentEncode($0.0) + "=" + FormEncoding.percentEncode($0.1) }.joined(separator: "&")
        let canonical = [request.method, path, query, canonicalHeaders, signedHeaders.joined(separator: ";"), payloadHash].joined(separator: "\n")
        guard let dateText = request.header("x-sdk-date"), let date = parseBasicUTC(dateText) else {
            throw refuse("X-Sdk-Date is not a time such as 20261205T120000Z")
        }
        let stringToSign = algorithm + "\n" + dateText + "\n" + SHA256.hash(data: Array(canonical.utf8)).hex
        guard let key = secret(accessKeyId) else { throw refuse("the access key \(accessKeyId) is not one of this server's keys") }
        let expected = HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: SymmetricKey(data: Array(key.utf8)))
        guard constantTimeEqual(Array(signature.lowercased().utf8), Array(Data(expected).hex.utf8)) else {
            throw refuse("the signature does not match the one computed with the secret of \(accessKeyId)")
        }
        // Writes have no nonce of their own: an identical signed request is a replay.
        return SignedCaller(accessKeyId: accessKeyId, nonce: request.method == "GET" ? nil : signature.lowercased(), date: date)
    }

    /// `20261205T120000Z`.
    public static func parseBasicUTC(_ text: String) -> Date? {
        let b = Array(text.utf8)
        guard b.count == 16, b[8] == UInt8(ascii: "T"), b[15] == UInt8(ascii: "Z") else { return nil }
        let expanded = String(decoding: b[0..<4], as: UTF8.self) + "-" + String(decoding: b[4..<6], as: UTF8.self) + "-"
            + String(decoding: b[6..<8], as: UTF8.self) + "T" + String(decoding: b[9..<11], as: UTF8.self) + ":"
            + String(decoding: b[11..<13], as: UTF8.self) + ":" + String(decoding: b[13..<15], as: UTF8.self) + "Z"
        return parseUTC(expanded)
    }

    /// Alibaba's own words, ending with the string the server signed: a client can tell a
    /// wrong secret (its string is the same) from a request changed on the way (the legacy
    /// SDK says `InvalidAccessKeySecret` in the first case). The string holds no secret.
    static func mismatch(_ stringToSign: String) -> APIError {
        APIError("SignatureDoesNotMatch", "Specified signature is not matched with our calculation. server string to sign is:" + stringToSign, status: 400)
    }

    /// `2026-12-05T12:00:00Z` (fractions of a second allowed), parsed as digits: a date
    /// formatter made per request cost more than the signature.
    public static func parseUTC(_ text: String) -> Date? {
        let b = Array(text.utf8)
        guard b.count >= 20, b.last == UInt8(ascii: "Z"), b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"),
              b[10] == UInt8(ascii: "T"), b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":") else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            var n = 0
            for i in range {
                guard b[i] >= UInt8(ascii: "0"), b[i] <= UInt8(ascii: "9") else { return nil }
                n = n * 10 + Int(b[i] - UInt8(ascii: "0"))
            }
            return n
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
              let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61 else { return nil }
        if b.count > 20 {
            guard b[19] == UInt8(ascii: "."), b.count > 21, number(20..<(b.count - 1)) != nil else { return nil }
        } else if b[19] != UInt8(ascii: "Z") { return nil }
        return Date(timeIntervalSince1970: Double(unixSeconds(year: year, month: month, day: day, hour: hour, minute: minute, second: second)))
    }

    /// Seconds since 1970 of a UTC civil time (days from civil: Howard Hinnant's algorithm).
    static func unixSeconds(year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146097 + dayOfEra - 719468
        return days * 86400 + hour * 3600 + minute * 60 + second
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for i in a.indices { difference |= a[i] ^ b[i] }
        return difference == 0
    }
}

extension Sequence where Element == UInt8 {
    public var hex: String {
        let digits = Array("0123456789abcdef".unicodeScalars)
        var out = ""
        for byte in self {
            out.unicodeScalars.append(digits[Int(byte >> 4)])
            out.unicodeScalars.append(digits[Int(byte & 15)])
        }
        return out
    }
}

extension SHA256Digest {
    public var hex: String { Array(self).hex }
}

extension Data {
    public var hex: String { Array(self).hex }
}
