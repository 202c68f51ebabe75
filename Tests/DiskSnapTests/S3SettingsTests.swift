import Testing
@testable import DiskSnapS3
@testable import DiskSnapStore

/// `--repo s3://...` and the AWS conventions, as the AWS CLI resolves them.
@Suite struct S3SettingsTests {
    static let credentials = """
    [default]
    aws_access_key_id = FILEKEY
    aws_secret_access_key = FILESECRET

    [work]
    aws_access_key_id=WORKKEY
    aws_secret_access_key=WORKSECRET
    aws_session_token=WORKTOKEN
    """
    static let config = """
    # comment
    [default]
    region = eu-west-1
    [profile work]
    region = ap-south-1
    endpoint_url = http://10.0.0.5:9000
    """

    func files(_ path: String) -> String? {
        switch path {
        case "/home/u/.aws/credentials": Self.credentials
        case "/home/u/.aws/config": Self.config
        default: nil
        }
    }

    @Test func addressesSplitIntoBucketAndPrefix() throws {
        #expect(try S3Settings.parse("s3://backups") == ("backups", ""))
        #expect(try S3Settings.parse("s3://backups/") == ("backups", ""))
        #expect(try S3Settings.parse("s3://backups/host-1/vms/") == ("backups", "host-1/vms"))
        for bad in ["s3://", "s3://ab", "s3://Upper", "s3://under_score", "s3://-dash", "s3://b/../x", "s3://bucket/a//b", "file:///x"] {
            #expect(throws: BlobStoreError.self, "\(bad)") { try S3Settings.parse(bad) }
        }
    }

    @Test func theEnvironmentComesFirst() throws {
        let env = ["HOME": "/home/u", "AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "ENVSECRET", "AWS_SESSION_TOKEN": "T",
                   "AWS_DEFAULT_REGION": "us-west-2", "AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:7480"]
        let location = try S3Settings.location("s3://b-1/p", environment: env, read: files)
        #expect(location.credentials == SigV4Credentials(accessKeyId: "ENVKEY", secretAccessKey: "ENVSECRET", sessionToken: "T"))
        #expect(location.region == "us-west-2")
        #expect(location.endpoint == "http://127.0.0.1:7480")  // the S3-specific one wins
        #expect(location.bucket == "b-1" && location.prefix == "p")
        var regional = env
        regional["AWS_REGION"] = "sa-east-1"
        #expect(try S3Settings.location("s3://b-1", environment: regional, read: files).region == "sa-east-1")
    }

    @Test func profilesComeFromTheAwsFiles() throws {
        let plain = try S3Settings.location("s3://bucket", environment: ["HOME": "/home/u"], read: files)
        #expect(plain.credentials == SigV4Credentials(accessKeyId: "FILEKEY", secretAccessKey: "FILESECRET"))
        #expect(plain.region == "eu-west-1")
        #expect(plain.endpoint == "https://s3.eu-west-1.amazonaws.com")
        let work = try S3Settings.location("s3://bucket", environment: ["HOME": "/home/u", "AWS_PROFILE": "work"], read: files)
        #expect(work.credentials == SigV4Credentials(accessKeyId: "WORKKEY", secretAccessKey: "WORKSECRET", sessionToken: "WORKTOKEN"))
        #expect(work.region == "ap-south-1")
        #expect(work.endpoint == "http://10.0.0.5:9000")
    }

    @Test func noCredentialsAndBadEndpointsAreRefused() {
        #expect(throws: BlobStoreError.self) { try S3Settings.location("s3://bucket", environment: ["HOME": "/nowhere"], read: files) }
        let env = ["HOME": "/home/u", "AWS_ENDPOINT_URL": "127.0.0.1:8333"]
        #expect(throws: BlobStoreError.self) { try S3Settings.location("s3://bucket", environment: env, read: files) }
        #expect(throws: BlobStoreError.self) {
            try S3Settings.location("s3://bucket", environment: ["HOME": "/home/u", "AWS_PROFILE": "absent"], read: files)
        }
    }
}
