import ArgumentParser
import DiskSnapSys
import DiskSnapFormat
import DiskSnapEngine
import DiskSnapStore

struct Copy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy",
        abstract: "Copy snapshots to another repository (a directory or s3://BUCKET[/PREFIX]).",
        discussion: "Only chunks the target lacks are read, each verified against its digest; the target's rules apply (names, quotas). A snapshot the target holds already is skipped, and a copy that was interrupted resumes where its last checkpoint left it when run again.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Snapshot ids or names in the source repository (--repo).")
    var snapshots: [String] = []
    @Option(help: "The target repository, which must exist (disksnap --repo TARGET init).")
    var to: String
    @Option(help: "The target's passphrase, when it differs from the source's: the first line of this file (also $DISKSNAP_TO_PASSWORD_FILE, $DISKSNAP_TO_PASSWORD).")
    var toPasswordFile: String?
    @Option(help: "The target's passphrase: the first line this shell command prints (also $DISKSNAP_TO_PASSWORD_COMMAND).")
    var toPasswordCommand: String?
    @Option(help: "The target's key file (also $DISKSNAP_TO_KEY_FILE).")
    var toKeyFile: String?
    @Flag(help: "Copy every accomplished snapshot of the source.")
    var all = false
    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        guard all != !snapshots.isEmpty else { throw ValidationError("name at least one snapshot, or pass --all (not both)") }
    }

    /// The target's own passphrase sources (`--to-*`, `$DISKSNAP_TO_*`); without any, the source's.
    var targetKeys: Repository.KeyProvider {
        SecretSources.other(keyFile: toKeyFile, passwordFile: toPasswordFile, passwordCommand: toPasswordCommand,
                            environmentPrefix: "DISKSNAP_TO", location: to, fallback: global.secrets)
    }

    func run() throws {
        try runReporting(json: json) {
            let source = try global.openRepository()
            let target = try GlobalOptions.openRepository(at: to, keys: targetKeys)
            var request = CopyRequest(snapshots: snapshots, all: all)
            request.progress = json ? nil : TerminalProgress.ifTerminal
            // One worker per core, from a bucket too: each holds ~20 MiB (a run, two pack staging
            // buffers, a block); 295 MiB copied back from SeaweedFS took 1.73 s with 2 workers
            // (79 MiB peak), 1.49 s with 3 (99 MiB), 1.55 s with 4 (120 MiB).
            request.workers = Workers.defaultCount
            if let text = FileSystem.environment("DISKSNAP_COPY_CHECKPOINT_BYTES"), let bytes = UInt64(text), bytes > 0 {
                request.checkpointBytes = bytes
            }
            let outcomes = try Copier(from: source, to: target).copy(request) { outcome in
                guard !json else { return }
                let id = outcome.record.snapshotId
                guard outcome.copied else {
                    Output.line("\(id) (\(outcome.record.snapshotName)): already in \(target.location)")
                    return
                }
                let disk = outcome.diskAdded.map { ", disk \($0) registered" } ?? ""
                Output.line("copied \(id) (\(outcome.record.snapshotName)) to \(target.location): \(outcome.chunksCopied) chunks (\(ByteFormat.human(outcome.bytesCopied))) read and verified, \(ByteFormat.human(outcome.bytesStored)) stored, \(outcome.chunksPresent) chunks already there\(disk), \(String(format: "%.2f", outcome.seconds)) s")
            }
            if json { Output.json(CopyResponse(target: target.location, outcomes)) }
        }
    }
}

struct CopyResponse: Encodable {
    struct Item: Encodable {
        var snapshotId: String
        var snapshotName: String
        var copied: Bool
        var chunksCopied: UInt64
        var bytesCopied: UInt64
        var bytesStored: UInt64
        var chunksPresent: UInt64
        var chunksAsStored: UInt64
        var diskAdded: String?
        var seconds: Double
    }
    var target: String
    var snapshots: [Item]
    var requestId = RandomUUID.generate()

    init(target: String, _ outcomes: [CopyOutcome]) {
        self.target = target
        snapshots = outcomes.map {
            Item(snapshotId: $0.record.snapshotId.rawValue, snapshotName: $0.record.snapshotName, copied: $0.copied,
                 chunksCopied: $0.chunksCopied, bytesCopied: $0.bytesCopied, bytesStored: $0.bytesStored,
                 chunksPresent: $0.chunksPresent, chunksAsStored: $0.chunksAsStored, diskAdded: $0.diskAdded?.rawValue, seconds: $0.seconds)
        }
    }
}
