import Foundation
import DiskSnapSys
import DiskSnapStore
import DiskSnapSeal

/// Where the passphrase (or key file) of an encrypted repository comes from, in this order:
/// `--key-file` ($DISKSNAP_KEY_FILE), `--password-file` ($DISKSNAP_PASSWORD_FILE),
/// `--password-command` ($DISKSNAP_PASSWORD_COMMAND), $DISKSNAP_PASSWORD, else a prompt on
/// the terminal (never echoed). The conventions restic users know. Nothing is asked for a
/// repository that is not encrypted.
struct SecretSources {
    var keyFile: String?
    var passwordFile: String?
    var passwordCommand: String?
    /// The environment variables' prefix: `DISKSNAP` (`copy`'s target: `DISKSNAP_TO`).
    var environmentPrefix = "DISKSNAP"
    /// For messages and the prompt.
    var location: String

    private func environment(_ suffix: String) -> String? {
        FileSystem.environment("\(environmentPrefix)_\(suffix)").flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The secret. `creating`: a repository or key is being made, so a passphrase typed at the
    /// terminal is asked twice and a key file that does not exist yet is created (32 random
    /// bytes, base64, mode 0600).
    func secret(creating: Bool = false) throws -> KeySecret {
        if let path = keyFile ?? environment("KEY_FILE") {
            if creating && !FileSystem.exists(path) {
                var generator = SystemRandomNumberGenerator()
                let random = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
                let file = try OpenFile(path: path, mode: [.writeOnly, .create, .exclusive], permissions: 0o600)
                try file.write(Array((Data(random).base64EncodedString() + "\n").utf8), at: 0)
                try file.sync()
            }
            guard FileSystem.exists(path) else { throw SealError.wrongKey("key file \(path) does not exist") }
            return .keyFile(path: path, bytes: try FileSystem.readFile(path))
        }
        if let path = passwordFile ?? environment("PASSWORD_FILE") {
            guard FileSystem.exists(path) else { throw SealError.wrongKey("password file \(path) does not exist") }
            return try Self.passphrase(firstLine(try FileSystem.readFile(path)), from: "password file \(path)")
        }
        if let command = passwordCommand ?? environment("PASSWORD_COMMAND") {
            return try Self.passphrase(try run(command), from: "password command")
        }
        if let given = environment("PASSWORD") { return .passphrase(given) }
        guard let typed = try Terminal.readSecret(prompt: "Passphrase for \(location): ") else {
            throw SealError.wrongKey("\(location) needs a passphrase: set $\(environmentPrefix)_PASSWORD, or give --password-file, --password-command or --key-file (no terminal to ask on)")
        }
        if creating {
            guard typed == (try Terminal.readSecret(prompt: "The same passphrase again: ")) else {
                throw SealError.wrongKey("the two passphrases typed differ; nothing was written")
            }
        }
        return try Self.passphrase(typed, from: "the terminal")
    }

    static func passphrase(_ text: String, from source: String) throws -> KeySecret {
        guard !text.isEmpty else { throw SealError.wrongKey("the passphrase from \(source) is empty") }
        return .passphrase(text)
    }

    private func firstLine(_ bytes: [UInt8]) -> String {
        let line = bytes.split(separator: UInt8(ascii: "\n"), maxSplits: 1, omittingEmptySubsequences: false).first ?? []
        return String(decoding: line.last == UInt8(ascii: "\r") ? line.dropLast() : line, as: UTF8.self)
    }

    /// The first line `sh -c command` prints; its failure (a non-zero exit) is an error.
    private func run(_ command: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        let output = Pipe()
        process.standardOutput = output
        do { try process.run() } catch {
            throw SealError.wrongKey("the password command could not start: \(error.localizedDescription)")
        }
        let bytes = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw SealError.wrongKey("the password command exited with status \(process.terminationStatus)")
        }
        return firstLine(Array(bytes))
    }

    /// The key sources of a second repository (`copy --to`'s target, `init --chunk-ids-from`'s
    /// source): its own options and `$<prefix>_*` variables; without any, `fallback`'s.
    static func other(keyFile: String?, passwordFile: String?, passwordCommand: String?, environmentPrefix: String,
                      location: String, fallback: SecretSources) -> Repository.KeyProvider {
        let own = SecretSources(keyFile: keyFile, passwordFile: passwordFile, passwordCommand: passwordCommand,
                                environmentPrefix: environmentPrefix, location: location)
        let given = keyFile != nil || passwordFile != nil || passwordCommand != nil
            || ["KEY_FILE", "PASSWORD_FILE", "PASSWORD_COMMAND", "PASSWORD"].contains { FileSystem.environment("\(environmentPrefix)_\($0)")?.isEmpty == false }
        var theirs = fallback
        theirs.location = location
        return given ? own.provider : theirs.provider
    }

    /// Asked only if the repository turns out to be encrypted.
    var provider: Repository.KeyProvider {
        let sources = self
        return { try sources.secret() }
    }
}
