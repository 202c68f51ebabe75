import ArgumentParser
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog

struct Disk: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "disk", abstract: "Register, list, show and remove disks.",
                                                    subcommands: [DiskAdd.self, DiskList.self, DiskShow.self, DiskRemove.self, DiskScan.self])
}

struct DiskAdd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "add", abstract: "Register a disk image or block device.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Raw image file or block device.") var path: String
    @Option(help: "Disk name: 1-128 letters, digits, '_', '.', ':', '-'.") var name: String
    @Option(help: "system or data.") var type: String = "data"
    @Option(help: "The VM (instance) the disk belongs to.") var instance: String?
    @Flag(help: "Print the disk as JSON.") var json = false

    func run() throws {
        try runReporting(json: json) {
            let repository = try global.openOrInitializeRepository()
            let lock = try repository.lockCatalog()
            defer { withExtendedLifetime(lock) {} }
            let disk = try DiskRegistry(repository: repository).add(path: path, name: name, type: type, instance: instance)
            if json { Output.json(disk) } else { Output.line(disk.diskId.rawValue) }
        }
    }
}

struct DiskList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List registered disks.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print an array of disks as JSON.") var json = false

    func run() throws {
        try runReporting(json: json) {
            let disks = try DiskRegistry(repository: try global.openRepository()).disks()
            if json { Output.json(disks); return }
            Output.line(Table.format([["ID", "NAME", "TYPE", "INSTANCE", "PATH"]] + disks.map {
                [$0.diskId.rawValue, $0.diskName, $0.diskType, $0.instance ?? "-", $0.path]
            }))
        }
    }
}

struct DiskShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one disk and its snapshot count.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Disk id, name or path.") var disk: String
    @Flag(help: "Print the disk as JSON.") var json = false

    func run() throws {
        try runReporting(json: json) {
            let repository = try global.openRepository()
            let d = try DiskRegistry(repository: repository).get(disk)
            if json { Output.json(d); return }
            let count = try Catalog(repository: repository).records().records.filter { $0.sourceDiskId == d.diskId }.count
            Output.line(Table.format([["DiskId", d.diskId.rawValue], ["DiskName", d.diskName], ["DiskType", d.diskType],
                                      ["Instance", d.instance ?? "-"], ["Path", d.path], ["CreationTime", d.creationTime],
                                      ["Snapshots", "\(count)"]]))
        }
    }
}

struct DiskRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Forget a disk (refused while it has snapshots).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Disk id, name or path.") var disk: String
    @Flag(help: "Also delete the disk's snapshots.") var withSnapshots = false

    func run() throws {
        try runReporting {
            let repository = try global.openRepository()
            let repositoryLock = try repository.lock(.shared, for: "disk remove")
            let lock = try repository.lockCatalog()
            defer { withExtendedLifetime((repositoryLock, lock)) {} }
            let registry = DiskRegistry(repository: repository)
            let d = try registry.get(disk)
            let catalog = Catalog(repository: repository)
            let snapshots = try catalog.records().records.filter { $0.sourceDiskId == d.diskId }
            if !snapshots.isEmpty && !withSnapshots {
                throw CatalogError(code: "DiskHasSnapshots", message: "disk \(d.diskId) (\(d.diskName)) has \(snapshots.count) snapshots; delete them or pass --with-snapshots", exitStatus: .conflict)
            }
            for snapshot in snapshots { try catalog.delete(snapshot) }
            try registry.remove(d)
            Output.line("removed \(d.diskId)" + (snapshots.isEmpty ? "" : " and \(snapshots.count) snapshots"))
        }
    }
}
