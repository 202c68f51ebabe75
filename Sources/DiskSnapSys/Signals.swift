import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Termination signals turned into a call, for long-running servers (`export`) that must
/// clean up (a Unix socket file) before they exit.
public enum Signals {
    nonisolated(unsafe) private static var sources: [any DispatchSourceSignal] = []

    /// From now on SIGINT, SIGTERM and SIGHUP call `body(signal)` on a Dispatch thread
    /// instead of ending the process. Call once, from the main thread.
    public static func onTermination(_ body: @escaping @Sendable (Int32) -> Void) {
        for number in [SIGINT, SIGTERM, SIGHUP] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { body(number) }
            source.resume()
            sources.append(source)
        }
    }

    /// Ends the process at once with `status` (no atexit handlers, no stdio flush).
    public static func exitNow(_ status: Int32) -> Never { _exit(status) }
}
