import ArgumentParser
import DiskSnapSys
import DiskSnapEngine
import DiskSnapServe

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Serve a snapshot read-only over NBD, for qemu-img, nbdcopy, nbdinfo or a VM.",
        discussion: """
            Runs until interrupted (Ctrl-C, SIGTERM). Clients connect to nbd+unix:///?socket=PATH or \
            nbd://HOST:PORT; the export name may be empty, the snapshot's id or its name. Several \
            clients may read at once; every chunk is verified against its digest. No authentication \
            and no TLS: listen on a Unix socket or a loopback address.
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Snapshot id or name.")
    var snapshot: String
    @Option(help: "Listen on a Unix socket at PATH (replaced if a dead server left it; removed on exit).")
    var socket: String?
    @Option(help: "Listen on TCP HOST:PORT (IPv4; port 0 picks a free one, printed at start).")
    var listen: String?

    func validate() throws {
        guard (socket == nil) != (listen == nil) else { throw ValidationError("give exactly one of --socket PATH and --listen HOST:PORT") }
    }

    func run() throws {
        try runReporting {
            let image = try SnapshotImage(repository: try global.openRepository(), snapshot: snapshot, command: "export")
            let listener: Socket
            let url: String
            if let socket {
                let path = FileSystem.absolutePath(socket)
                listener = try Socket.listen(unixPath: path)
                url = "nbd+unix:///?socket=\(path)"
            } else {
                let parts = listen!.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count == 2, let port = UInt16(parts[1]) else {
                    throw ValidationError("--listen wants HOST:PORT, like 127.0.0.1:10809")
                }
                let host = String(parts[0])
                listener = try Socket.listen(tcpHost: host, port: port)
                url = "nbd://\(host):\(listener.port)/"
                if !host.hasPrefix("127.") { Output.warning("\(host) is not a loopback address: anyone who reaches it can read the snapshot") }
            }
            let unixPath = socket.map(FileSystem.absolutePath)
            Signals.onTermination { signal in
                if let unixPath { try? FileSystem.removeIfExists(unixPath) }
                Signals.exitNow(0)
            }
            Output.line("exporting \(image.record.snapshotId) (\(image.record.snapshotName), \(image.size) bytes) read-only at \(url)")
            let server = NBDServer(image: image) { Output.log("export: \($0)") }
            try server.serve(listener)
        }
    }
}
