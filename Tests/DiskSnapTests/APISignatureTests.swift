import Testing
import Foundation
@testable import DiskSnapAPI
@testable import DiskSnapAPIWire

/// The request signatures the official SDKs make, verified here against vectors computed by
/// the SDKs' own signers (alibabacloud-tea-openapi 0.4.6 `Utils.get_authorization`;
/// aliyun-python-sdk-core 2.16.1 `rpc_signature_composer.get_signed_url`; huaweicloudsdkcore
/// 3.1.219 `Signer.sign`), with a fixed
/// date and nonce; and the schedule of automatic-snapshot policies.
@Suite struct APISignatureTests {
    static func secret(_ id: String) -> String? { id == "DSKEY" ? "secret" : nil }

    static func acs3Request(signature: String = "a5f8885362e0b4868fe794b0b2039077d0fe06b0ec86965a92e1098ef02330dd",
                            query: String = "DiskId=d-abc&SnapshotName=nightly%201&Tag.1.Key=k~&Tag.1.Value=v%2F%C3%A9") -> APIRequest {
        APIRequest(method: "POST", path: "/", rawQuery: query, headers: [
            ("Host", "127.0.0.1:8080"), ("x-acs-version", "2014-05-26"), ("x-acs-action", "CreateSnapshot"),
            ("x-acs-date", "2026-12-05T12:00:00Z"), ("x-acs-signature-nonce", "nonce-1"), ("accept", "application/json"),
            ("x-acs-content-sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), ("user-agent", "ua"),
            ("Authorization", "ACS3-HMAC-SHA256 Credential=DSKEY,SignedHeaders=accept;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=\(signature)"),
        ], body: [])
    }

    @Test func acs3VectorVerifies() throws {
        let caller = try RequestSignature.verifyACS3(Self.acs3Request(), secret: Self.secret)
        #expect(caller.accessKeyId == "DSKEY" && caller.nonce == "nonce-1")
        #expect(caller.date == ISO8601DateFormatter().date(from: "2026-12-05T12:00:00Z"))
    }

    @Test func acs3RefusesAChangedParameterOrBody() {
        #expect(throws: APIError.self) { try RequestSignature.verifyACS3(Self.acs3Request(query: "DiskId=d-abd&SnapshotName=nightly%201&Tag.1.Key=k~&Tag.1.Value=v%2F%C3%A9"), secret: Self.secret) }
        var withBody = Self.acs3Request()
        withBody.body = Array("x".utf8)
        do {
            _ = try RequestSignature.verifyACS3(withBody, secret: Self.secret)
            Issue.record("a body the signature does not cover was accepted")
        } catch { #expect(error.code == "SignatureDoesNotMatch") }
        do {
            _ = try RequestSignature.verifyACS3(Self.acs3Request(), secret: { _ in nil })
            Issue.record("an unknown key was accepted")
        } catch { #expect(error.code == "InvalidAccessKeyId.NotFound") }
    }

    @Test func rpcVectorVerifies() throws {
        let query = "Action=DescribeSnapshots&Version=2014-05-26&RegionId=local&SnapshotName=a%20b%2Ac~&Timestamp=2026-12-05T12%3A00%3A00Z&SignatureMethod=HMAC-SHA1&SignatureType=&SignatureVersion=1.0&SignatureNonce=nonce-2&AccessKeyId=DSKEY&Format=JSON&Signature=PcCo1TeWFIr%2FE7P7u%2F0pqesvQwI%3D"
        let request = APIRequest(method: "GET", path: "/", rawQuery: query, headers: [], body: [])
        let caller = try RequestSignature.verifyRPC(request, secret: Self.secret)
        #expect(caller.accessKeyId == "DSKEY" && caller.nonce == "nonce-2")
        do {
            _ = try RequestSignature.verifyRPC(APIRequest(method: "POST", path: "/", rawQuery: query, headers: [], body: []), secret: Self.secret)
            Issue.record("the method is signed, yet another was accepted")
        } catch {
            #expect(error.code == "SignatureDoesNotMatch")
            // The server's string to sign, as the legacy SDK compares it with its own.
            #expect(error.message.hasSuffix(":POST&%2F&AccessKeyId%3DDSKEY%26Action%3DDescribeSnapshots%26Format%3DJSON%26RegionId%3Dlocal%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3Dnonce-2%26SignatureType%3D%26SignatureVersion%3D1.0%26SnapshotName%3Da%2520b%252Ac~%26Timestamp%3D2026-12-05T12%253A00%253A00Z%26Version%3D2014-05-26"))
        }
    }

    /// huaweicloudsdkcore 3.1.219's `Signer.sign` on a CSS create (AK `AKTEST`, SK `SKTEST`).
    @Test func huaweiVectorVerifies() throws {
        let body = Array(#"{"name": "snap1", "description": "d", "indices": "idx*"}"#.utf8)
        func request(_ signature: String, body: [UInt8]) -> APIRequest {
            APIRequest(method: "POST", path: "/v1.0/proj123/clusters/c1/index_snapshot", rawQuery: "", headers: [
                ("Content-Type", "application/json"), ("User-Agent", "ua-test"), ("X-Project-Id", "proj123"),
                ("X-Sdk-Date", "20240101T000000Z"), ("Host", "127.0.0.1:19437"),
                ("Authorization", "SDK-HMAC-SHA256 Access=AKTEST, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, Signature=\(signature)"),
            ], body: body)
        }
        let key: (String) -> String? = { $0 == "AKTEST" ? "SKTEST" : nil }
        let caller = try RequestSignature.verifyHuawei(request("70a27667e5884c57a2abf81549f5fbae40a1620d74e0b28f209503cd8e20e4fa", body: body), secret: key)
        #expect(caller.accessKeyId == "AKTEST" && caller.nonce == "70a27667e5884c57a2abf81549f5fbae40a1620d74e0b28f209503cd8e20e4fa")
        #expect(throws: APIError.self) {
            try RequestSignature.verifyHuawei(request("70a27667e5884c57a2abf81549f5fbae40a1620d74e0b28f209503cd8e20e4fa", body: Array("{}".utf8)), secret: key)
        }
    }

    @Test func replayGuardRefusesTheSameNonceAndStaleTimes() throws {
        let guardian = ReplayGuard(capacity: 2)
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        try guardian.admit(SignedCaller(accessKeyId: "K", nonce: "n1", date: now), now: now)
        #expect(throws: APIError.self) { try guardian.admit(SignedCaller(accessKeyId: "K", nonce: "n1", date: now), now: now) }
        #expect(throws: APIError.self) { try guardian.admit(SignedCaller(accessKeyId: "K", nonce: "n2", date: now.addingTimeInterval(-16 * 60)), now: now) }
        try guardian.admit(SignedCaller(accessKeyId: "K", nonce: "n2", date: now), now: now)
        // Full: refused rather than a nonce forgotten early.
        #expect(throws: APIError.self) { try guardian.admit(SignedCaller(accessKeyId: "K", nonce: "n3", date: now), now: now) }
        // Past the window, the old nonces are forgotten and room is made.
        let later = now.addingTimeInterval(31 * 60)
        try guardian.admit(SignedCaller(accessKeyId: "K", nonce: "n3", date: later), now: later)
    }

    @Test func utcTimesParseAsFoundationDoes() {
        for text in ["2026-12-05T12:00:00Z", "1970-01-01T00:00:00Z", "2000-02-29T23:59:59.5Z", "2099-12-31T00:00:01.123Z", "1999-03-01T10:20:30Z"] {
            let expected = ISO8601DateFormatter().date(from: text.replacingOccurrences(of: #"\.\d+"#, with: "", options: .regularExpression))!
            #expect(RequestSignature.parseUTC(text).map { floor($0.timeIntervalSince1970) } == expected.timeIntervalSince1970, "\(text)")
        }
        for bad in ["2026-12-05T12:00:00", "2026-13-05T12:00:00Z", "2026-12-05 12:00:00Z", "2026-12-05T12:00:00.Z", "x"] {
            #expect(RequestSignature.parseUTC(bad) == nil, "\(bad)")
        }
        #expect(RequestSignature.parseBasicUTC("20240101T000000Z") == RequestSignature.parseUTC("2024-01-01T00:00:00Z"))
    }

    @Test func percentEncodingIsRFC3986() {
        #expect(FormEncoding.percentEncode("a b*c~/é") == "a%20b%2Ac~%2F%C3%A9")
        #expect(FormEncoding.decode("a=x+y%2B&b=&c").map { "\($0.0)=\($0.1)" } == ["a=x y+", "b=", "c="])
    }

    @Test func scheduleFindsTheLatestTimePoint() {
        // 2026-12-05 is a Saturday (6).
        let at = { (text: String) in ISO8601DateFormatter().date(from: text)! }
        #expect(AutoSchedule.latestDue(hours: [2, 14], weekdays: [6], atOrBefore: at("2026-12-05T15:30:00Z")) == at("2026-12-05T14:00:00Z"))
        #expect(AutoSchedule.latestDue(hours: [2, 14], weekdays: [6], atOrBefore: at("2026-12-05T01:59:59Z")) == at("2026-11-28T14:00:00Z"))
        #expect(AutoSchedule.latestDue(hours: [0], weekdays: [1], atOrBefore: at("2026-12-05T15:30:00Z")) == at("2026-11-30T00:00:00Z"))
        #expect(AutoSchedule.latestDue(hours: [23], weekdays: [7], atOrBefore: at("2026-12-06T23:00:00Z")) == at("2026-12-06T23:00:00Z"))
    }
}
