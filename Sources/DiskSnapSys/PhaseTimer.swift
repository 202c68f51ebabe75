import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// `DISKSNAP_TIMINGS=1`: each command prints, on stderr, how long each of its phases took
/// (milliseconds since the previous mark, and since the process started). For finding where
/// a command's time goes; off by default, and one clock read per mark when off.
public enum PhaseTimer {
    private static let enabled = FileSystem.environment("DISKSNAP_TIMINGS") == "1"
    private static let start = processStart()
    private static let last = Mutex<Double>(start)

    private static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) * 1000 + Double(t.tv_nsec) / 1_000_000
    }

    /// The process's start on the monotonic clock (`/proc/self/stat` field 22, in clock ticks since boot).
    private static func processStart() -> Double {
        guard let bytes = try? FileSystem.readFile("/proc/self/stat") else { return now() }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let close = text.lastIndex(of: ")") else { return now() }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let ticks = Double(fields[19]) else { return now() }
        return ticks * 1000 / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    public static func mark(_ phase: String) {
        guard enabled else { return }
        let t = now()
        let (delta, total) = last.withLock { (previous: inout Double) -> (Double, Double) in
            defer { previous = t }
            return (t - previous, t - start)
        }
        let line = Array("disksnap: timing: \(phase) +\(Int(delta.rounded())) ms (at \(Int(total.rounded())) ms)\n".utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}
