import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Switches that tests use to stop a command at a precise step. Compiled into debug builds
/// only (`tools/test` builds debug); a release build ignores the variables.
///
/// - `DISKSNAP_FAULT=N`: the process kills itself with SIGKILL just before its Nth durable
///   step (a write, fsync, ftruncate, rename, link or unlink, or a request that changes a
///   bucket: PUT, POST, DELETE), as a crash or power cut at that point would.
///   `tools/crash-campaign` runs commands with N = 1, 2, ... and checks what each crash
///   leaves (docs/DESIGN.md, "What each crash point leaves").
/// - `DISKSNAP_TEST_PAUSE=POINT:PATH[,POINT:PATH...]`: at a named point the process
///   creates `PATH.reached` and waits until PATH exists. One point's PATH may be another's
///   `.reached` file: the first waits until a second thread has reached the other.
public enum TestHooks {
    #if DEBUG
    private static let faultAt: Int? = FileSystem.environment("DISKSNAP_FAULT").flatMap { Int($0) }
    private static let pauseSpecs: [(point: String, path: String)] = (FileSystem.environment("DISKSNAP_TEST_PAUSE") ?? "")
        .split(separator: ",").compactMap { (spec: Substring) -> (point: String, path: String)? in
            guard let colon = spec.firstIndex(of: ":") else { return nil }
            return (String(spec[..<colon]), String(spec[spec.index(after: colon)...]))
        }
    private static let steps = Atomic<Int>(0)
    #endif

    /// Called before every durable step.
    @inline(__always)
    public static func durableStep() {
        #if DEBUG
        guard let faultAt else { return }
        if steps.wrappingAdd(1, ordering: .relaxed).newValue == faultAt { kill(getpid(), SIGKILL) }
        #endif
    }

    public static func pause(at point: String) {
        #if DEBUG
        guard let spec = pauseSpecs.first(where: { $0.point == point }) else { return }
        close(open(spec.path + ".reached", O_CREAT | O_WRONLY, 0o600))
        while access(spec.path, F_OK) != 0 { usleep(10_000) }
        #endif
    }
}
