import Testing
import Foundation
@testable import DiskSnapS3

/// The AWS SigV4 test suite (aws-sig-v4-test-suite, 2015: its requests and the canonical
/// requests, strings to sign and Authorization headers AWS published for them), every
/// vector, through our signer. The vectors are facts from AWS, in Fixtures/.
@Suite struct SigV4Tests {
    struct Vector: Decodable {
        var name: String
        var request: String
        var canonicalRequest: String
        var stringToSign: String
        var authorization: String
    }

    static let vectors: [Vector] = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/sigv4-testsuite.json")
        return (try? JSONDecoder().decode([Vector].self, from: Data(contentsOf: url))) ?? []
    }()

    static let credentials = SigV4Credentials(accessKeyId: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")

    /// The suite's raw request: request line, headers (a continuation line is one more
    /// value of the header above), a blank line, the body.
    static func parse(_ text: String) -> (SigV4Request, String) {
        let (head, body): (Substring, String) = {
            if let range = text.range(of: "\n\n") { return (text[..<range.lowerBound], String(text[range.upperBound...])) }
            return (Substring(text), "")
        }()
        var lines = head.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let requestLine = lines.removeFirst()
        let method = String(requestLine.prefix { $0 != " " })
        let target = String(requestLine.dropFirst(method.count + 1).dropLast(" HTTP/1.1".count))
        let pathPart = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = String(pathPart[0])
        var query: [(String, String)] = []
        if pathPart.count == 2, !pathPart[1].isEmpty {
            for item in pathPart[1].split(separator: "&") {
                let kv = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                query.append((String(kv[0]).removingPercentEncoding ?? String(kv[0]), kv.count == 2 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : ""))
            }
        }
        var headers: [(String, String)] = []
        var amzDate = ""
        for line in lines {
            if line.first == " " || line.first == "\t", let last = headers.last {
                headers.append((last.0, line.trimmingCharacters(in: .whitespaces)))
                continue
            }
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = String(line[..<colon]), value = String(line[line.index(after: colon)...])
            if name.lowercased() == "x-amz-date" { amzDate = value }
            headers.append((name, value))
        }
        let payload = SigV4.payloadHash(Array(body.utf8))
        return (SigV4Request(method: method, path: path, query: query, headers: headers, payloadHash: payload), amzDate)
    }

    @Test func theSuiteIsHere() {
        #expect(Self.vectors.count >= 30)
    }

    @Test(arguments: vectors.map(\.name)) func vector(_ name: String) throws {
        let v = try #require(Self.vectors.first { $0.name == name })
        let (request, amzDate) = Self.parse(v.request)
        let signed = SigV4.sign(request, credentials: Self.credentials, region: "us-east-1", service: "service",
                                amzDate: amzDate, normalizePath: true)
        #expect(signed.canonicalRequest == v.canonicalRequest)
        #expect(signed.stringToSign == v.stringToSign)
        #expect(signed.authorization == v.authorization)
    }

    @Test func s3PathsAreSignedAsTheyAreAndDatesAsAWSWritesThem() {
        #expect(SigV4.canonicalURI("/bucket/a//b/./c", normalize: false) == "/bucket/a//b/./c")
        #expect(SigV4.encode("a b+c/ü", keepSlash: false) == "a%20b%2Bc%2F%C3%BC")
        #expect(SigV4.amzDate(Date(timeIntervalSince1970: 1440938160)) == "20150830T123600Z")
        #expect(SigV4.canonicalQuery([("delete", ""), ("list-type", "2"), ("continuation-token", "a/b=")]) == "continuation-token=a%2Fb%3D&delete=&list-type=2")
    }
}
