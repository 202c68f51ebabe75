import ArgumentParser
import DiskSnapSys
import DiskSnapCatalog
import DiskSnapQcow2

struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "probe", abstract: "Tell what is on a disk image or block device (libblkid): table, partitions, filesystems.")

    @Argument(help: "Disk image file, block device, or UUID=/LABEL=/PARTUUID=/PTUUID= of a device.") var source: String
    @Flag(help: "Print the identity as JSON.") var json = false

    func run() throws {
        try runReporting(json: json) {
            var path = source
            if let tag = DiskTag(source) {
                guard let device = try tag.devicePath() else {
                    throw CatalogError(code: "InvalidDiskId.NotFound", message: "no device on this machine has \(source)", exitStatus: .notFound)
                }
                path = device
            }
            guard FileSystem.exists(path) else {
                throw SystemError(errno: 2, operation: "probe", path: path)
            }
            let identity = try GuestProbe.identify(path: path)
            if json { Output.json(identity) } else { Output.line(IdentityText.render(identity)) }
        }
    }
}
