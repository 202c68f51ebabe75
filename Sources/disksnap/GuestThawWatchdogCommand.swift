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

    @Option var guestAgent: String?
    @Option var libvirt: String?
    @Option var domain: String?
    @Option var limit: Double
    @Option var parent: Int32

    func run() throws {
        let target: FreezeTarget
        if let guestAgent {
            target = .agent(socketPath: guestAgent)
        } else if let libvirt, let domain {
            target = .libvirt(uri: libvirt, domain: domain)
        } else {
            throw ValidationError("--guest-agent, or --libvirt with --domain")
        }
        let status = GuestFreezer.runWatchdog(target: target, limit: limit, parent: parent)
        if status != 0 { throw ExitCode(status) }
    }
}
