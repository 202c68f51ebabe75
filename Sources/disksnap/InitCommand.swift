import ArgumentParser
import DiskSnapFormat
import DiskSnapStore

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create a repository (create does this with defaults when needed).")

    @OptionGroup var global: GlobalOptions
    @Option(help: "Chunk size: a power of two from 64K to 16M (default 64K).")
    var chunkSize: String?
    @Option(help: "Chunk compression: zstd:LEVEL (1-19) or none (default zstd:3).")
    var compression: String?
    @Flag(help: "Print the repository settings as JSON.")
    var json = false

    func run() throws {
        try runReporting(json: json) {
            let size = try chunkSize.map { try ChunkSize(parsing: $0) } ?? .default
            let method = try compression.map { try Compression(parsing: $0) } ?? .default
            let repository = try Repository.initialize(at: global.repositoryPath, config: RepositoryConfig(chunkSize: size, compression: method))
            if json {
                Output.json(repository.config)
            } else {
                Output.line("initialized repository \(repository.root) (chunk size \(size), compression \(method))")
            }
        }
    }
}
