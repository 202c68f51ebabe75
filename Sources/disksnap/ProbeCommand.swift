import ArgumentParser
import DiskSnapSys

struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Tell what is on a disk image or block device (libblkid): table, partitions, filesystems.")

    @Argument(help: "Disk image file or block device.") var source: String
    @Flag(help: "Print the identity as JSON.") var json = false

    func run() throws {
        try runReporting(json: json) {
            guard FileSystem.exists(source) else {
                throw SystemError(errno: 2, operation: "probe", path: source)
            }
            let identity = try DiskProbe.identify(path: source)
            if json { Output.json(identity) } else { Output.line(IdentityText.render(identity)) }
        }
    }
}
