import ArgumentParser
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create a repository (create does this with defaults when needed).")

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
            switch encryption ?? (GlobalOptions.isBucket(global.repositoryPath) ? "aes-256-gcm" : "none") {
            case "aes-256-gcm": encrypted = true
            case "none": encrypted = false
            case let other: throw CatalogError.invalid("InvalidParameter.Encryption", "--encryption '\(other)' is not aes-256-gcm or none")
            }
            var config = RepositoryConfig(chunkSize: size, compression: method)
            config.profile = chosen.rawValue
            config.maxSnapshots = maxSnapshots
            if !encrypted && encryption != nil { config.encryption = "none" }  // chosen, and recorded
            let secret = encrypted ? try global.secrets.secret(creating: true) : nil
            let repository = try global.initializeRepository(config, secret: secret)
            if json {
                Output.json(repository.config)
            } else {
                let sealing = encrypted ? ", encrypted (AES-256-GCM, key \(repository.openedKey!.keyId))" : ""
                Output.line("initialized repository \(repository.location) (chunk size \(size), compression \(method), profile \(chosen.rawValue)\(maxSnapshots.map { ", at most \($0) snapshots" } ?? "")\(sealing))")
            }
        }
    }
}
