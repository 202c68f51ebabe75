import ArgumentParser
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapS3
import DiskSnapEngine
import DiskSnapSeal

@main
struct DiskSnap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disksnap",
        abstract: "Point-in-time snapshots of disks into a deduplicated, compressed store.",
        discussion: "Exit statuses: 0 success, 1 check found problems, 2 invalid parameter, 3 not found, 4 conflict, 5 busy, 6 repository corrupt, 7 I/O error, 8 quota exceeded, 70 internal error, 64 usage. See docs/CLI.md.",
        version: "0.1.0",
        subcommands: [Init.self, Disk.self, Probe.self, Create.self, Auto.self, Bench.self, List.self, Show.self, Restore.self, Diff.self, Mount.self, Export.self, Copy.self, Modify.self, Delete.self, Prune.self, GC.self, Check.self, Stats.self, Key.self, Serve.self, GuestThawWatchdog.self]
    )

    /// Lets `--repo` stand before the subcommand as well as after it.
    @OptionGroup var global: GlobalOptions

    static func main() {
        MemoryPolicy.mapLargeBuffersAlone()
        main(nil)
    }
}

/// Options every subcommand shares.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "Repository: a directory, or s3://BUCKET[/PREFIX] (default: $DISKSNAP_REPO, else ~/.local/share/disksnap).")
    var repo: String?

    @Option(name: .long, help: "An encrypted repository's passphrase: the first line of this file (also $DISKSNAP_PASSWORD_FILE; or $DISKSNAP_PASSWORD, --password-command, a prompt).")
    var passwordFile: String?
    @Option(name: .long, help: "An encrypted repository's passphrase: the first line this shell command prints (also $DISKSNAP_PASSWORD_COMMAND).")
    var passwordCommand: String?
    @Option(name: .long, help: "Open an encrypted repository with this key file instead of a passphrase; init creates it when absent (also $DISKSNAP_KEY_FILE).")
    var keyFile: String?

    /// Where this command's passphrase comes from.
    var secrets: SecretSources {
        SecretSources(keyFile: keyFile, passwordFile: passwordFile, passwordCommand: passwordCommand, location: repositoryPath)
    }

    var repositoryPath: String {
        if let repo { return repo }
        if let env = FileSystem.environment("DISKSNAP_REPO"), !env.isEmpty { return env }
        return (FileSystem.environment("HOME") ?? "/root") + "/.local/share/disksnap"
    }

    func openRepository() throws -> Repository { try Self.openRepository(at: repositoryPath, keys: secrets.provider) }

    /// Opens the repository at `location`: a directory, or `s3://BUCKET[/PREFIX]`; `keys`
    /// is asked for a passphrase only if it is encrypted.
    static func openRepository(at location: String, keys: Repository.KeyProvider?) throws -> Repository {
        guard let bucket = try bucket(location) else { return try Repository.open(at: location, keys: keys) }
        return try Repository.open(remote: bucket.store, cacheRoot: Self.cacheRoot, keys: keys)
    }

    /// Opens the repository, creating it with the default settings when nothing is there yet.
    func openOrInitializeRepository() throws -> Repository {
        guard let bucket = try Self.bucket(repositoryPath) else {
            return try Repository.openOrInitialize(at: repositoryPath, keys: secrets.provider)
        }
        do {
            return try Repository.open(remote: bucket.store, cacheRoot: Self.cacheRoot, keys: secrets.provider)
        } catch let error as StoreError where error.kind == .repositoryNotFound {
            do {
                // A bucket is encrypted by default, as `init` makes it: the passphrase is needed now.
                return try initializeRepository(RepositoryConfig(chunkSize: .default, compression: .default),
                                                secret: try secrets.secret(creating: true))
            } catch let error as StoreError where error.kind == .repositoryExists {
                return try Repository.open(remote: bucket.store, cacheRoot: Self.cacheRoot, keys: secrets.provider)  // another process was first
            }
        }
    }

    /// Creates the repository, encrypted when `secret` is given; in a bucket only once the
    /// server has shown that it honours conditional writes (a server that ignores them is
    /// refused: BlobStore.Unsupported).
    func initializeRepository(_ config: RepositoryConfig, secret: KeySecret? = nil, sharingChunkIdsOf other: MasterKeys? = nil) throws -> Repository {
        guard let bucket = try Self.bucket(repositoryPath) else {
            return try Repository.initialize(at: repositoryPath, config: config, secret: secret, sharingChunkIdsOf: other)
        }
        try bucket.s3.checkConditionalWrites()
        return try Repository.initialize(remote: bucket.store, cacheRoot: Self.cacheRoot, config: config, secret: secret, sharingChunkIdsOf: other)
    }


    /// The bucket `s3://...` names: the store the repository uses (retrying transient
    /// faults) and the S3 store under it (for init's probe of conditional writes); nil for a directory.
    private static func bucket(_ location: String) throws -> (store: any BlobStore, s3: S3BlobStore)? {
        guard S3Settings.isS3(location) else { return nil }
        var environment: [String: String] = [:]
        for name in ["HOME", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                     "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"] {
            environment[name] = FileSystem.environment(name)
        }
        let settings = try S3Settings.location(location, environment: environment) { path in
            (try? FileSystem.readFile(path)).map { String(decoding: $0, as: UTF8.self) }
        }
        let s3 = S3BlobStore(settings)
        return (RetryingBlobStore(s3), s3)
    }

    /// The local caches of bucket repositories: `$XDG_CACHE_HOME/disksnap`, else `~/.cache/disksnap`.
    static var cacheRoot: String {
        if let cache = FileSystem.environment("XDG_CACHE_HOME"), cache.hasPrefix("/") { return cache + "/disksnap" }
        return (FileSystem.environment("HOME") ?? "/root") + "/.cache/disksnap"
    }
}

/// Runs a subcommand's body; a coded error becomes one line on stderr (or a JSON object
/// with --json) and its documented exit status.
func runReporting(json: Bool = false, _ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as any CodedError {
        if json {
            Output.json(ErrorBody(code: error.code, message: error.message, httpStatus: error.httpStatus, requestId: RandomUUID.generate()))
        }
        Output.error("\(error.code): \(error.message)")
        throw ExitCode(error.exitStatus.rawValue)
    } catch let error as ExitCode {
        throw error
    } catch let error as DecodingError {
        Output.error("Repository.Corrupt: \(error)")
        throw ExitCode(ExitStatus.corrupt.rawValue)
    } catch let error as ValidationError {
        throw error  // the argument parser's: a usage error (64)
    } catch {
        // Nothing should get here: every error of disksnap's own carries a code.
        if json {
            Output.json(ErrorBody(code: "InternalError", message: "\(error)", httpStatus: 500, requestId: RandomUUID.generate()))
        }
        Output.error("InternalError: \(error)")
        throw ExitCode(ExitStatus.internalError.rawValue)
    }
}

struct ErrorBody: Encodable {
    var code: String
    var message: String
    var httpStatus: Int
    var requestId: String
}

enum Output {
    static func line(_ text: String) { write(text + "\n", to: 1) }
    static func error(_ text: String) { write("Error: " + text + "\n", to: 2) }
    static func warning(_ text: String) { write("disksnap: warning: " + text + "\n", to: 2) }
    /// Rewrites the line standard error's cursor is on (a terminal's progress line).
    static func partialLine(_ text: String) { write("\r\u{1B}[K" + text, to: 2) }
    static func log(_ text: String) { write("disksnap: " + text + "\n", to: 2) }

    static func json<T: Encodable>(_ value: T) { write(RecordJSON.encode(value), to: 1) }

    private static func write(_ text: String, to descriptor: Int32) { write(Array(text.utf8), to: descriptor) }

    private static func write(_ bytes: [UInt8], to descriptor: Int32) {
        var bytes = bytes
        _ = bytes.withUnsafeMutableBytes { FileSystem.writeRaw(descriptor: descriptor, $0) }
    }

    static var stderrIsTerminal: Bool { FileSystem.isTerminal(2) }
}

/// The engine's progress drawn on standard error, one line rewritten in place: bytes, rate, ETA.
struct TerminalProgress: ProgressObserver {
    /// An observer when standard error is a terminal, else none.
    static var ifTerminal: TerminalProgress? { Output.stderrIsTerminal ? TerminalProgress() : nil }

    func update(label: String, done: UInt64, total: UInt64, elapsedSeconds: Double) {
        let rate = Double(done) / max(elapsedSeconds, 0.001)
        let eta = rate > 0 && total > done ? Double(total - done) / rate : 0
        let percent = total > 0 ? Double(done) * 100 / Double(total) : 100
        Output.partialLine("\(label) \(ByteFormat.human(done)) / \(ByteFormat.human(total)) (\(Int(percent))%)  \(ByteFormat.human(UInt64(rate)))/s  ETA \(Int(eta.rounded()))s")
    }

    func finished(label: String) { Output.partialLine("") }
}
