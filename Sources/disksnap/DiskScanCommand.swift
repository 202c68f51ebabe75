import ArgumentParser
import DiskSnapSys
import DiskSnapEngine

struct DiskScan: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "scan", abstract: "List this machine's block devices and what is on them (no repository needed).")
    @Flag(help: "Print an array of devices as JSON.") var json = false

    func run() throws {
        try runReporting(json: json) {
            let devices = try BlockDeviceScan.scan()
            if json { Output.json(devices); return }
            Output.line(Table.format([["NAME", "SIZE", "MODEL", "FLAGS", "TABLE", "CONTENT", "MOUNTED"]] + devices.map { d in
                let flags = [d.readOnly ? "ro" : nil, d.removable ? "removable" : nil, d.rotational ? "rotational" : nil].compactMap { $0 }
                let content: String
                if let why = d.notProbed { content = "(not probed: \(why))" }
                else if let i = d.identity {
                    let fs = i.filesystems.map { [$0.type, $0.label].compactMap { $0 }.joined(separator: ":") }
                    content = fs.isEmpty ? (i.problem ?? "-") : fs.joined(separator: ", ")
                } else { content = "-" }
                return [d.name, ByteFormat.human(d.size), d.model ?? "-", flags.isEmpty ? "-" : flags.joined(separator: ","),
                        d.identity?.partitionTableType ?? "-", content, d.mountPoints.isEmpty ? "-" : d.mountPoints.joined(separator: ",")]
            }))
        }
    }
}
