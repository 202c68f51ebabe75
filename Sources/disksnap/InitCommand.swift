import ArgumentParser
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog
import DiskSnapSeal
import DiskSnapS3

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "init", abstract: "Create a repository (create does this with defaults when needed).")

    @OptionGroup var global: GlobalOptions
    @Option(help: "Chunk size: a power of two from 64K to 16M (default 64K).")
    var chunkSize: String?
    @Option(help: "Chunk compression: zstd:LEVEL (1-19) or none (default zstd:3).")
    var compression: String?
    @Option(help: "Rule profile: ecs (default), wuying, swas or css (docs/RULES.md).")
    var profile: String = "ecs"
    @Option(help: "Repository-wide cap on snapshots, on top of the profile's limits.")
    var maxSnapshots: Int?
    @Option(help: ArgumentHelp("Encryption at rest: aes-256-gcm (chunks, indexes and records sealed, chunk ids keyed; the default for s3:// repositories) or none (the default for a directory).", valueName: "aes-256-gcm|none"))
    var encryption: String?
    @Option(help: "Share the chunk-id key of this encrypted repository, so that copies between the two deduplicate and pass blocks on instead of renaming every chunk (its key: --from-password-file, --from-password-command, --from-key-file, $DISKSNAP_FROM_PASSWORD, else this repository's).")
    var chunkIdsFrom: String?
    @Option(help: "The --chunk-ids-from repository's passphrase: the first line of this file.")
    var fromPasswordFile: String?
    @Option(help: "The --chunk-ids-from repository's passphrase: the first line this shell command prints.")
    var fromPasswordCommand: String?
    @Option(help: "The --chunk-ids-from repository's key file.")
    var fromKeyFile: String?
    @Flag(help: "Print the repository settings as JSON.")
    var json = false

    func run() throws {
        try runReporting(json: json) {
            let size = try chunkSize.map { try ChunkSize(parsing: $0) } ?? .default
            let method = try compression.map { try Compression(parsing: $0) } ?? .default
            guard let chosen = Profile(rawValue: profile) else {
                throw CatalogError.invalid("InvalidParameter.Profile", "profile '\(profile)' is not one of \(Profile.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if let cap = maxSnapshots, cap < 1 {
                throw CatalogError.invalid("InvalidParameter.MaxSnapshots", "--max-snapshots \(cap) must be at least 1")
            }
            let encrypted: Bool
            switch encryption ?? (S3Settings.isS3(global.repositoryPath) ? "aes-256-gcm" : "none") {
            case "aes-256-gcm": encrypted = true
            case "none": encrypted = false
            case let other: throw CatalogError.invalid("InvalidParameter.Encryption", "--encryption '\(other)' is not aes-256-gcm or none")
            }
            var config = RepositoryConfig(chunkSize: size, compression: method)
            config.profile = chosen.rawValue
            config.maxSnapshots = maxSnapshots
            if !encrypted && encryption != nil { config.encryption = "none" }  // chosen, and recorded
            var sharing: MasterKeys?
            if let chunkIdsFrom {
                guard encrypted else {
                    throw CatalogError.invalid("InvalidParameter.ChunkIdsFrom", "--chunk-ids-from needs an encrypted repository (--encryption aes-256-gcm)")
                }
                let keys = SecretSources.other(keyFile: fromKeyFile, passwordFile: fromPasswordFile, passwordCommand: fromPasswordCommand,
                                               environmentPrefix: "DISKSNAP_FROM", location: chunkIdsFrom, fallback: global.secrets)
                guard let sealer = try GlobalOptions.openRepository(at: chunkIdsFrom, keys: keys).sealer else {
                    throw CatalogError.invalid("InvalidParameter.ChunkIdsFrom", "\(chunkIdsFrom) is not encrypted: it names chunks by SHA-256, which an encrypted repository must not")
                }
                sharing = sealer.keys
            }
            let secret = encrypted ? try global.secrets.secret(creating: true) : nil
            let repository = try global.initializeRepository(config, secret: secret, sharingChunkIdsOf: sharing)
            if json {
                Output.json(repository.config)
            } else {
                let sealing = encrypted ? ", encrypted (AES-256-GCM, key \(repository.openedKey!.keyId))" : ""
                Output.line("initialized repository \(repository.location) (chunk size \(size), compression \(method), profile \(chosen.rawValue)\(maxSnapshots.map { ", at most \($0) snapshots" } ?? "")\(sealing))")
            }
        }
    }
}
