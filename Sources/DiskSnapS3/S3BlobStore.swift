import Crypto
import Foundation
import DiskSnapSys
import DiskSnapStore

/// Where a bucket is and how to sign for it.
public struct S3Location: Sendable, Equatable {
    /// `http://127.0.0.1:8333` (no trailing slash).
    public var endpoint: String
    public var bucket: String
    /// Keys of the repository live under `PREFIX/` (empty: the bucket's root).
    public var prefix: String
    public var region: String
    public var credentials: SigV4Credentials

    public init(endpoint: String, bucket: String, prefix: String, region: String, credentials: SigV4Credentials) {
        self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        self.bucket = bucket
        self.prefix = prefix.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        self.region = region
        self.credentials = credentials
    }

    /// `host[:port]` of the endpoint, as signed in `Host`.
    var host: String {
        let afterScheme = endpoint.components(separatedBy: "://").last ?? endpoint
        return String(afterScheme.prefix { $0 != "/" })
    }
}

/// A blob store in an S3 bucket (path-style addressing, as self-hosted servers want),
/// every request signed with SigV4 (`SigV4`). Create-only writes are `PUT` with
/// `If-None-Match: *`, compare-and-swap is `If-Match: ETAG`; a server that ignores them is
/// refused by `checkConditionalWrites` at `init`, never raced silently. ETags are the
/// versions: an ETag names the content, so writing the very same bytes again may keep the
/// version (harmless for a compare-and-swap: the state is then the same too).
public final class S3BlobStore: BlobStore {
    public let s3: S3Location
    private let http: HTTPClient
    private let clock: @Sendable () -> Date
    public var location: String { "s3://\(s3.bucket)\(s3.prefix.isEmpty ? "" : "/" + s3.prefix)" }

    public init(_ s3: S3Location, http: HTTPClient = HTTPClient(), clock: @escaping @Sendable () -> Date = { Date() }) {
        self.s3 = s3
        self.http = http
        self.clock = clock
    }

    func objectKey(_ key: BlobKey) -> String { s3.prefix.isEmpty ? key.path : "\(s3.prefix)/\(key.path)" }

    // MARK: Requests

    struct Answer {
        var status: Int
        var response: HTTPResponse
        var code: String?
        var message: String?
    }

    /// Signs and sends one request; transport failures and 5xx come back as transient errors.
    /// `file`: the body is an open file's first `length` bytes, whose SHA-256 (hex) is given.
    private func send(_ method: String, objectKey: String?, query: [(String, String)] = [], headers extra: [(String, String)] = [],
                      body: [UInt8] = [], file: (descriptor: Int32, length: Int, sha256: String)? = nil,
                      into destination: UnsafeMutableRawBufferPointer? = nil) throws -> Answer {
        if method != "GET" && method != "HEAD" { TestHooks.durableStep() }
        let path = "/\(s3.bucket)" + (objectKey.map { "/\($0)" } ?? "")
        let amzDate = SigV4.amzDate(clock())
        let payloadHash = file?.sha256 ?? (body.isEmpty ? SigV4.emptyPayloadHash : SigV4.payloadHash(body))
        var headers: [(String, String)] = [("Host", s3.host), ("X-Amz-Date", amzDate), ("X-Amz-Content-Sha256", payloadHash)] + extra
        if let token = s3.credentials.sessionToken { headers.append(("X-Amz-Security-Token", token)) }
        let signature = SigV4.sign(SigV4Request(method: method, path: path, query: query, headers: headers, payloadHash: payloadHash),
                                   credentials: s3.credentials, region: s3.region, service: "s3", amzDate: amzDate)
        headers.append(("Authorization", signature.authorization))
        let queryText = SigV4.canonicalQuery(query)
        let url = s3.endpoint + SigV4.encode(path, keepSlash: true) + (queryText.isEmpty ? "" : "?" + queryText)
        let response: HTTPResponse
        do {
            response = try http.send(method: method, url: url, headers: headers.filter { $0.0 != "Host" }, body: body,
                                     bodyFile: file.map { ($0.descriptor, $0.length) }, into: destination)
        } catch {
            throw BlobStoreError(.transient, "\(method) \(location): \(error.message) (curl \(error.curlCode))")
        }
        var answer = Answer(status: response.status, response: response)
        if response.status >= 300, let tree = XMLTree.parse(String(decoding: response.body, as: UTF8.self)), tree.name == "Error" {
            answer.code = tree.child("Code")?.text
            answer.message = tree.child("Message")?.text
        }
        if response.status >= 500 || response.status == 429 || answer.code == "SlowDown" || answer.code == "RequestTimeout" {
            throw BlobStoreError(.transient, describe(method, objectKey, answer))
        }
        return answer
    }

    private func describe(_ method: String, _ objectKey: String?, _ answer: Answer) -> String {
        "\(method) s3://\(s3.bucket)/\(objectKey ?? ""): HTTP \(answer.status)\(answer.code.map { " \($0)" } ?? "")\(answer.message.map { ": \($0)" } ?? "")"
    }

    /// What every other failure means.
    private func failure(_ method: String, _ objectKey: String?, _ answer: Answer) -> BlobStoreError {
        let text = describe(method, objectKey, answer)
        switch (answer.status, answer.code) {
        case (403, _), (401, _), (_, "NoSuchBucket"), (_, "InvalidAccessKeyId"), (_, "SignatureDoesNotMatch"):
            return BlobStoreError(.denied, text)
        case (404, _): return BlobStoreError(.notFound, text)
        case (501, _), (_, "NotImplemented"): return BlobStoreError(.unsupported, text)
        case (409, _): return BlobStoreError(.transient, text)
        default: return BlobStoreError(.failed, text)
        }
    }

    static func bare(_ tag: String) -> String {
        tag.count >= 2 && tag.hasPrefix("\"") && tag.hasSuffix("\"") ? String(tag.dropFirst().dropLast()) : tag
    }

    private func version(_ answer: Answer, _ method: String, _ objectKey: String) throws -> BlobVersion {
        guard let tag = answer.response.header("ETag"), !tag.isEmpty else {
            throw BlobStoreError(.failed, "\(method) s3://\(s3.bucket)/\(objectKey): the answer has no ETag")
        }
        return BlobVersion(tag)
    }

    // MARK: BlobStore

    @discardableResult
    public func create(_ key: BlobKey, _ bytes: [UInt8]) throws -> BlobVersion {
        let object = objectKey(key)
        let answer = try send("PUT", objectKey: object, headers: [("If-None-Match", "*")], body: bytes)
        switch answer.status {
        case 200: return try version(answer, "PUT", object)
        case 412: throw BlobStoreError(.alreadyExists, "\(key) exists already in \(location)")
        default: throw failure("PUT", object, answer)
        }
    }

    /// A create-only PUT whose body is read from the file as it is sent: hashed once for the
    /// signature (SigV4 signs the payload's SHA-256), then streamed, never held in memory.
    @discardableResult
    public func create(_ key: BlobKey, fromFile path: String) throws -> BlobVersion {
        let object = objectKey(key)
        let file: OpenFile
        let size: Int
        var hasher = SHA256()
        do {
            file = try OpenFile(path: path)
            size = Int(try file.status().size)
            var piece = [UInt8](repeating: 0, count: 4 << 20)
            var offset = 0
            while offset < size {
                let count = min(piece.count, size - offset)
                try piece.withUnsafeMutableBytes { try file.readExactly(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<count]), at: UInt64(offset)) }
                piece.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[..<count])) }
                offset += count
            }
        } catch {
            throw BlobStoreError(.failed, "PUT \(location)/\(key) from \(path): \((error as? any CodedError)?.message ?? "\(error)")")
        }
        let digest = hasher.finalize().map { String(format: "%02x", $0) }.joined()
        let answer = try send("PUT", objectKey: object, headers: [("If-None-Match", "*")], file: (file.descriptor, size, digest))
        switch answer.status {
        case 200: return try version(answer, "PUT", object)
        case 412: throw BlobStoreError(.alreadyExists, "\(key) exists already in \(location)")
        default: throw failure("PUT", object, answer)
        }
    }

    @discardableResult
    public func replace(_ key: BlobKey, _ bytes: [UInt8], ifVersion expected: BlobVersion?) throws -> BlobVersion {
        let object = objectKey(key)
        // The ETag without its quotes: Ceph RGW compares If-Match byte for byte with the bare
        // ETag it stores (a quoted one never matches there), SeaweedFS and AWS take either.
        let condition = expected.map { ("If-Match", Self.bare($0.tag)) } ?? ("If-None-Match", "*")
        let answer = try send("PUT", objectKey: object, headers: [condition], body: bytes)
        switch answer.status {
        case 200: return try version(answer, "PUT", object)
        case 412, 404:
            guard answer.status == 412 || expected != nil else { throw failure("PUT", object, answer) }
            throw BlobStoreError(.versionMismatch, "\(key) in \(location) is not at version \(expected?.tag ?? "absent")")
        default: throw failure("PUT", object, answer)
        }
    }

    /// Buffered, one create-only PUT at commit (packs are tens of MiB; multipart is not used yet).
    public func writer(for key: BlobKey) throws -> any BlobWriter { BufferedBlobWriter(store: self, key: key) }

    public func read(_ key: BlobKey) throws -> (bytes: [UInt8], version: BlobVersion) {
        let object = objectKey(key)
        let answer = try send("GET", objectKey: object)
        guard answer.status == 200 else { throw failure("GET", object, answer) }
        return (answer.response.body, try version(answer, "GET", object))
    }

    public func read(_ key: BlobKey, range: Range<UInt64>) throws -> [UInt8] {
        let object = objectKey(key)
        if range.isEmpty {
            guard try info(key) != nil else { throw BlobStoreError(.notFound, "\(key) does not exist in \(location)") }
            return []
        }
        let answer = try send("GET", objectKey: object, headers: [("Range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)")])
        switch answer.status {
        case 206: return answer.response.body
        case 200:
            // The server sent it all: the range, cut at the end.
            let body = answer.response.body
            guard range.lowerBound < UInt64(body.count) else { throw BlobStoreError(.invalidRange, "\(key) has \(body.count) bytes: no byte at \(range.lowerBound)") }
            return Array(body[Int(range.lowerBound)..<Int(min(range.upperBound, UInt64(body.count)))])
        case 416: throw BlobStoreError(.invalidRange, "\(key) in \(location) has no byte at \(range.lowerBound)")
        default: throw failure("GET", object, answer)
        }
    }

    /// The ranged GET's body lands in `buffer` itself (a pack's blocks, MiBs at a time, are
    /// not held twice); any answer but a fitting 206 is left to `read(_:range:)`, which asks
    /// again and says what it is.
    public func read(_ key: BlobKey, range: Range<UInt64>, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        precondition(UInt64(buffer.count) >= UInt64(range.count), "the buffer holds the range")
        let object = objectKey(key)
        if !range.isEmpty {
            let answer = try send("GET", objectKey: object, headers: [("Range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)")], into: buffer)
            if answer.status == 206 && !answer.response.overflowed { return answer.response.received }
        }
        return try readCopying(key, range: range, into: buffer)
    }

    public func info(_ key: BlobKey) throws -> BlobInfo? {
        let object = objectKey(key)
        let answer = try send("HEAD", objectKey: object)
        if answer.status == 404 { return nil }
        guard answer.status == 200 else { throw failure("HEAD", object, answer) }
        guard let length = answer.response.header("Content-Length").flatMap(UInt64.init) else {
            throw BlobStoreError(.failed, "HEAD s3://\(s3.bucket)/\(object): no Content-Length")
        }
        return BlobInfo(key: key, size: length, version: try version(answer, "HEAD", object))
    }

    public func list(prefix: String, after: BlobKey?, limit: Int) throws -> BlobPage {
        let base = s3.prefix.isEmpty ? "" : s3.prefix + "/"
        var query = [("list-type", "2"), ("prefix", base + prefix), ("max-keys", "\(max(1, min(limit, 1000)))")]
        if let after { query.append(("start-after", base + after.path)) }
        let answer = try send("GET", objectKey: nil, query: query)
        guard answer.status == 200 else { throw failure("GET ?list-type=2", nil, answer) }
        guard let tree = XMLTree.parse(String(decoding: answer.response.body, as: UTF8.self)), tree.name == "ListBucketResult" else {
            throw BlobStoreError(.failed, "the listing of \(location) is not a ListBucketResult")
        }
        var blobs: [BlobInfo] = []
        for entry in tree.all("Contents") {
            guard let name = entry.child("Key")?.text, name.hasPrefix(base), let key = try? BlobKey(String(name.dropFirst(base.count))),
                  let size = entry.child("Size").flatMap({ UInt64($0.text) }) else { continue }
            blobs.append(BlobInfo(key: key, size: size, version: BlobVersion(entry.child("ETag")?.text ?? "")))
        }
        blobs.sort { $0.key < $1.key }
        let truncated = tree.child("IsTruncated")?.text == "true"
        if limit <= 0 { return BlobPage(blobs: [], truncated: !blobs.isEmpty || truncated) }
        return BlobPage(blobs: Array(blobs.prefix(limit)), truncated: truncated || blobs.count > limit)
    }

    public func delete(_ key: BlobKey) throws {
        let object = objectKey(key)
        let answer = try send("DELETE", objectKey: object)
        guard answer.status == 204 || answer.status == 200 || answer.status == 404 else { throw failure("DELETE", object, answer) }
    }

    /// `DeleteObjects`, 1000 keys a request (its `Content-MD5` is required by S3).
    public func delete(_ keys: [BlobKey]) throws {
        var start = 0
        while start < keys.count {
            let batch = keys[start..<min(keys.count, start + 1000)]
            start += batch.count
            var xml = "<Delete><Quiet>true</Quiet>"
            for key in batch { xml += "<Object><Key>\(XMLTree.escape(objectKey(key)))</Key></Object>" }
            xml += "</Delete>"
            let body = Array(xml.utf8)
            let md5 = Data(Insecure.MD5.hash(data: body)).base64EncodedString()
            let answer = try send("POST", objectKey: nil, query: [("delete", "")],
                                  headers: [("Content-MD5", md5), ("Content-Type", "application/xml")], body: body)
            guard answer.status == 200 else { throw failure("POST ?delete", nil, answer) }
            if let tree = XMLTree.parse(String(decoding: answer.response.body, as: UTF8.self)),
               let error = tree.all("Error").first(where: { $0.child("Code")?.text != "NoSuchKey" }) {
                throw BlobStoreError(.failed, "deleting \(error.child("Key")?.text ?? "?") from \(location): \(error.child("Code")?.text ?? "") \(error.child("Message")?.text ?? "")")
            }
        }
    }

    // MARK: Init-time checks

    /// Creates the bucket (one that exists and is ours is fine).
    public func createBucket() throws {
        let answer = try send("PUT", objectKey: nil)
        guard answer.status == 200 || answer.code == "BucketAlreadyOwnedByYou" else { throw failure("PUT bucket", nil, answer) }
    }

    /// Refuses a bucket that is missing, credentials that are refused, and a server that
    /// ignores conditional writes (it would let two writers both "create" one key).
    public func checkConditionalWrites() throws {
        let probe = BlobKey(validated: "locks/conditional-write-probe-\(UUID().uuidString.lowercased())")
        defer { try? delete(probe) }
        let first = try create(probe, [1])
        do {
            try create(probe, [2])
            throw BlobStoreError(.unsupported, "\(location) ignores If-None-Match: * (a second create-only PUT of one key succeeded): this server cannot hold a repository safely")
        } catch let error as BlobStoreError where error.kind == .alreadyExists {}
        do {
            try replace(probe, [3], ifVersion: BlobVersion("\"00000000000000000000000000000000\""))
            throw BlobStoreError(.unsupported, "\(location) ignores If-Match (a PUT with a wrong ETag succeeded): this server cannot hold a repository safely")
        } catch let error as BlobStoreError where error.kind == .versionMismatch {}
        _ = try replace(probe, [4], ifVersion: first)
    }
}
