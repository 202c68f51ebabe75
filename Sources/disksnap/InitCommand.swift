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
            var config = RepositoryConfig(chunkSize: size, compression: method)
            config.profile = chosen.rawValue
            config.maxSnapshots = maxSnapshots
            let repository = try global.initializeRepository(config)
            if json {
                Output.json(repository.config)
            } else {
                Output.line("initialized repository \(repository.location) (chunk size \(size), compression \(method), profile \(chosen.rawValue)\(maxSnapshots.map { ", at most \($0) snapshots" } ?? ""))")
            }
        }
    }
}
