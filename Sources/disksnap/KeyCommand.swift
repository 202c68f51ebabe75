import ArgumentParser
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapSeal
import DiskSnapEngine

struct Key: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key",
        abstract: "List, add, change and remove the keys of an encrypted repository.",
        discussion: "Each key file wraps the repository's master keys under one passphrase (or key file); any of them opens the repository. Changing or removing one rewrites that file alone.",
        subcommands: [KeyList.self, KeyAdd.self, KeyPasswd.self, KeyRemove.self])
}

/// Where a new passphrase comes from: `--new-password-file`, `--new-key-file`,
/// $DISKSNAP_NEW_PASSWORD, else the terminal (asked twice).
struct NewSecretOptions: ParsableArguments {
    @Option(help: "The new passphrase: the first line of this file (also $DISKSNAP_NEW_PASSWORD; else asked twice at the terminal).")
    var newPasswordFile: String?
    @Option(help: "A key file instead of a passphrase (created, 32 random bytes, when absent).")
    var newKeyFile: String?

    func secret(for location: String) throws -> KeySecret {
        try SecretSources(keyFile: newKeyFile, passwordFile: newPasswordFile, passwordCommand: nil,
                          environmentPrefix: "DISKSNAP_NEW", location: "\(location) (new key)").secret(creating: true)
    }
}

struct KeyList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the repository's keys (* marks the one used now).")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print an array of keys as JSON.") var json = false

    struct Listed: Encodable {
        var keyId: String
        var current: Bool
        var kind: String
        var creationTime: String
        var hostname: String
        var username: String
    }

    func run() throws {
        try runReporting(json: json) {
            let ring = try KeyRing(repository: try global.openRepository())
            let listed = try ring.keys().map {
                Listed(keyId: $0.keyId, current: $0.keyId == ring.current.keyId,
                       kind: $0.kdf.takesKeyFile ? "key-file" : "passphrase (scrypt N=2^\($0.kdf.logN) r=\($0.kdf.r) p=\($0.kdf.p))",
                       creationTime: $0.creationTime, hostname: $0.hostname, username: $0.username)
            }
            if json { Output.json(listed); return }
            Output.line(Table.format([[" ", "KEY", "KIND", "CREATED", "HOST", "USER"]] + listed.map {
                [$0.current ? "*" : " ", $0.keyId, $0.kind, $0.creationTime, $0.hostname, $0.username]
            }))
        }
    }
}

struct KeyAdd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "add", abstract: "Add a passphrase (or key file) that opens the repository.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var new: NewSecretOptions
    @Flag(help: "Print the new key's id as JSON.") var json = false

    func run() throws {
        try runReporting(json: json) {
            let ring = try KeyRing(repository: try global.openRepository())
            let key = try ring.add(try new.secret(for: global.repositoryPath))
            if json { Output.json(["KeyId": key.keyId]) } else { Output.line("added key \(key.keyId)") }
        }
    }
}

struct KeyPasswd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "passwd", abstract: "Change the passphrase of the key used now (its key file alone is rewritten).")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var new: NewSecretOptions

    func run() throws {
        try runReporting {
            let ring = try KeyRing(repository: try global.openRepository())
            let key = try ring.change(to: try new.secret(for: global.repositoryPath))
            Output.line("changed key \(key.keyId)")
        }
    }
}

struct KeyRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a key (not the last, nor the one used now).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The key's id (disksnap key list).") var keyId: String

    func run() throws {
        try runReporting {
            try KeyRing(repository: try global.openRepository()).remove(keyId)
            Output.line("removed key \(keyId)")
        }
    }
}
