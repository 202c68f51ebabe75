import ArgumentParser
import DiskSnapSys
import DiskSnapEngine
import DiskSnapServe

struct Mount: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Show a snapshot as read-only disk images through FUSE, to read single files without a restore.",
        discussion: """
            MOUNTPOINT holds disk.img and part1.img, part2.img, ... (the partitions recorded at snapshot \
            time), readable by debugfs, e2fsck -n, fsck.vfat -n or a read-only loop mount. Runs until \
            unmounted (fusermount3 -u MOUNTPOINT) or interrupted (Ctrl-C); a mount point it created is \
            removed at the end.
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Snapshot id or name.")
    var snapshot: String
    @Argument(help: "An empty directory (created if missing).")
    var mountpoint: String

    func run() throws {
        try runReporting {
            let image = try SnapshotImage(repository: try global.openRepository(), snapshot: snapshot, command: "mount")
            let path = FileSystem.absolutePath(mountpoint)
            var created = false
            if let status = try FileSystem.statusIfExists(path) {
                guard status.isDirectory else { throw SystemError(errno: 20, operation: "mount (not a directory)", path: path) }
            } else {
                try FileSystem.makeDirectory(path, permissions: 0o700)
                created = true
            }
            defer { if created { try? FileSystem.removeDirectory(path) } }
            let mount = SnapshotMount(image: image)
            let names = mount.files.map(\.file.name).joined(separator: ", ")
            try mount.serve(at: path, ready: {
                Output.line("mounted \(image.record.snapshotId) (\(image.record.snapshotName)) read-only at \(path): \(names); fusermount3 -u \(path) or Ctrl-C to unmount")
            }, log: { Output.log("mount: \($0)") })
        }
    }
}
