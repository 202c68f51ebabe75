import ArgumentParser
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore

@main
struct DiskSnap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disksnap",
        abstract: "Point-in-time snapshots of disks into a deduplicated, compressed store.",
        discussion: "Exit statuses: 0 success, 1 check found problems, 2 invalid parameter, 3 not found, 4 conflict, 5 busy, 6 repository corrupt, 7 I/O error, 8 quota exceeded, 70 internal error, 64 usage. See docs/CLI.md.",
        version: "0.1.0",
        subcommands: [Init.self, Disk.self, Probe.self, Create.self, Auto.self, Bench.self, List.self, Show.self, Restore.self, Diff.self, Mount.self, Export.self, Delete.self, Prune.self, GC.self, Check.self, Stats.self, GuestThawWatchdog.self]
    )

    /// Lets `--repo` stand before the subcommand as well as after it.
    @OptionGroup var global: GlobalOptions
}

/// Options every subcommand shares.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "Repository directory (default: $DISKSNAP_REPO, else ~/.local/share/disksnap).")
    var repo: String?

    var repositoryPath: String {
        if let repo { return repo }
        if let env = FileSystem.environment("DISKSNAP_REPO"), !env.isEmpty { return env }
        return (FileSystem.environment("HOME") ?? "/root") + "/.local/share/disksnap"
    }

    func openRepository() throws -> Repository { try Repository.open(at: repositoryPath) }
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
    static func log(_ text: String) { write("disksnap: " + text + "\n", to: 2) }

    static func json<T: Encodable>(_ value: T) { write(RecordJSON.encode(value), to: 1) }

    private static func write(_ text: String, to descriptor: Int32) { write(Array(text.utf8), to: descriptor) }

    private static func write(_ bytes: [UInt8], to descriptor: Int32) {
        var bytes = bytes
        _ = bytes.withUnsafeMutableBytes { FileSystem.writeRaw(descriptor: descriptor, $0) }
    }

    static var stderrIsTerminal: Bool { FileSystem.isTerminal(2) }
}
