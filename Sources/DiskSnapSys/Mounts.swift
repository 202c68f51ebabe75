/// What /proc/self/mountinfo says about a block device.
public enum Mounts {
    public struct Mount: Sendable, Equatable {
        public let mountPoint: String
        public let readWrite: Bool
    }

    /// The mounts of the device `major:minor` (a partition of it is a different device and is
    /// not included).
    public static func mounts(ofDevice device: UInt64, mountInfo: String? = nil) -> [Mount] {
        let text = mountInfo ?? (try? FileSystem.readFile("/proc/self/mountinfo")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        let wanted = "\(BlockDevice.major(device)):\(BlockDevice.minor(device))"
        var result: [Mount] = []
        for line in text.split(separator: "\n") {
            // id parent major:minor root mount-point options ...
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count > 5, fields[2] == wanted else { continue }
            let options = fields[5].split(separator: ",")
            result.append(Mount(mountPoint: unescape(String(fields[4])), readWrite: options.contains("rw")))
        }
        return result
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescape(_ field: String) -> String {
        var out = ""
        var characters = Array(field)[...]
        while let c = characters.popFirst() {
            if c == "\\", characters.count >= 3, let code = UInt8(String(characters.prefix(3)), radix: 8) {
                out.append(Character(Unicode.Scalar(code)))
                characters = characters.dropFirst(3)
            } else {
                out.append(c)
            }
        }
        return out
    }
}
