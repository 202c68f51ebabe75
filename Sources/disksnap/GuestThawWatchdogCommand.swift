import ArgumentParser
import DiskSnapQemu

/// The watchdog `create --freeze` starts before it freezes a guest (GuestFreezer): not for
/// users, so not in the help.
struct GuestThawWatchdog: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guest-thaw-watchdog",
        abstract: "Thaws a guest that a create --freeze left frozen (started by create itself).",
        shouldDisplay: false
    )

    @Option var guestAgent: String
    @Option var limit: Double
    @Option var parent: Int32

    func run() throws {
        let status = GuestFreezer.runWatchdog(socketPath: guestAgent, limit: limit, parent: parent)
        if status != 0 { throw ExitCode(status) }
    }
}
