import DiskSnapSys
import DiskSnapStore

/// `--repo s3://BUCKET[/PREFIX]` and the AWS conventions users already have, as the AWS CLI
/// reads them (pure: the environment and the files' text are passed in):
/// - credentials: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`), else
///   the profile (`AWS_PROFILE`, else `default`) in `~/.aws/credentials`
///   (`AWS_SHARED_CREDENTIALS_FILE`), else in `~/.aws/config` (`AWS_CONFIG_FILE`);
/// - region: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`, else `us-east-1`;
/// - endpoint: `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, the profile's `endpoint_url`, else
///   AWS's regional endpoint. Requests are path-style (self-hosted servers want it).
public enum S3Settings {
    public static let scheme = "s3://"

    public static func isS3(_ repository: String) -> Bool { repository.hasPrefix(scheme) }

    /// The bucket and key prefix of `s3://BUCKET[/PREFIX]`.
    public static func parse(_ url: String) throws(BlobStoreError) -> (bucket: String, prefix: String) {
        guard url.hasPrefix(scheme) else { throw BlobStoreError(.invalidKey, "'\(url)' is not an s3://BUCKET[/PREFIX] address") }
        let rest = url.dropFirst(scheme.count)
        let bucket = String(rest.prefix { $0 != "/" })
        var prefix = String(rest.dropFirst(bucket.count))
        while prefix.hasPrefix("/") { prefix.removeFirst() }
        while prefix.hasSuffix("/") { prefix.removeLast() }
        guard isBucketName(bucket) else {
            throw BlobStoreError(.invalidKey, "'\(bucket)' in \(url) is not a bucket name (3-63 of a-z, 0-9, '.', '-', starting and ending with a letter or digit)")
        }
        guard prefix.isEmpty || BlobKey.isValid(prefix) else {
            throw BlobStoreError(.invalidKey, "'\(prefix)' in \(url) is not a key prefix (parts of [A-Za-z0-9._-] joined by /)")
        }
        return (bucket, prefix)
    }

    static func isBucketName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (3...63).contains(bytes.count) else { return false }
        func alnum(_ b: UInt8) -> Bool { (0x61...0x7a).contains(b) || (0x30...0x39).contains(b) }
        guard alnum(bytes.first!), alnum(bytes.last!) else { return false }
        return bytes.allSatisfy { alnum($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") }
    }

    /// Sections of an AWS ini file (`[default]`, `[profile x]`, `[x]`) to their keys.
    static func ini(_ text: String) -> [String: [String: String]] {
        var sections: [String: [String: String]] = [:]
        var current: String?
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("["), line.hasSuffix("]") {
                current = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                continue
            }
            guard let current, let equals = line.firstIndex(of: "=") else { continue }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces).lowercased()
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            sections[current, default: [:]][key] = value
        }
        return sections
    }

    /// Where `url` is and how to sign for it. `read` returns a file's text, nil if absent.
    public static func location(_ url: String, environment: [String: String], read: (String) -> String?) throws(BlobStoreError) -> S3Location {
        let (bucket, prefix) = try parse(url)
        func env(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        let home = env("HOME") ?? "/root"
        let profile = env("AWS_PROFILE") ?? "default"
        let credentialsFile = ini(read(env("AWS_SHARED_CREDENTIALS_FILE") ?? home + "/.aws/credentials") ?? "")[profile] ?? [:]
        let configSections = ini(read(env("AWS_CONFIG_FILE") ?? home + "/.aws/config") ?? "")
        let config = configSections[profile == "default" ? "default" : "profile \(profile)"] ?? configSections[profile] ?? [:]

        let credentials: SigV4Credentials
        if let id = env("AWS_ACCESS_KEY_ID"), let secret = env("AWS_SECRET_ACCESS_KEY") {
            credentials = SigV4Credentials(accessKeyId: id, secretAccessKey: secret, sessionToken: env("AWS_SESSION_TOKEN"))
        } else if let id = credentialsFile["aws_access_key_id"], let secret = credentialsFile["aws_secret_access_key"] {
            credentials = SigV4Credentials(accessKeyId: id, secretAccessKey: secret, sessionToken: credentialsFile["aws_session_token"])
        } else if let id = config["aws_access_key_id"], let secret = config["aws_secret_access_key"] {
            credentials = SigV4Credentials(accessKeyId: id, secretAccessKey: secret, sessionToken: config["aws_session_token"])
        } else {
            throw BlobStoreError(.denied, "no credentials for \(url): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (now '\(profile)') with keys in ~/.aws/credentials")
        }
        let region = env("AWS_REGION") ?? env("AWS_DEFAULT_REGION") ?? config["region"] ?? "us-east-1"
        let endpoint = env("AWS_ENDPOINT_URL_S3") ?? env("AWS_ENDPOINT_URL") ?? config["endpoint_url"] ?? "https://s3.\(region).amazonaws.com"
        guard endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://") else {
            throw BlobStoreError(.invalidKey, "endpoint '\(endpoint)' for \(url) is not an http:// or https:// URL")
        }
        return S3Location(endpoint: endpoint, bucket: bucket, prefix: prefix, region: region, credentials: credentials)
    }
}
