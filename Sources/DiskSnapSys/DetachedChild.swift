import CShim
#if canImport(Glibc)
import Glibc
#endif

/// A helper process of our own binary that must outlive us: started in its own session (a
/// terminal's ^C or hangup reaches only us), talking to us through two pipes. When we die,
/// its stdin reads end of file: that is how it learns.
public final class DetachedChild {
    public let processID: Int32
    /// Our end of its stdin.
    private var toChild: Int32
    /// Our end of its stdout.
    private let fromChild: Int32

    /// Starts this same executable with `arguments`.
    public init(arguments: [String]) throws(SystemError) {
        var input: [Int32] = [0, 0]
        var output: [Int32] = [0, 0]
        guard ds_pipe_cloexec(&input) == 0 else { throw SystemError.current("pipe2", "") }
        guard ds_pipe_cloexec(&output) == 0 else {
            let saved = errno
            close(input[0]); close(input[1])
            throw SystemError(errno: saved, operation: "pipe2", path: "")
        }
        let executable = "/proc/self/exe"
        var argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) }
        argv.append(nil)
        defer { argv.forEach { free($0) } }
        var pid: Int32 = 0
        let rc = ds_spawn_detached(executable, argv, input[0], output[1], &pid)
        close(input[0])
        close(output[1])
        guard rc == 0 else {
            close(input[1]); close(output[0])
            throw SystemError(errno: rc, operation: "spawn", path: executable)
        }
        processID = pid
        toChild = input[1]
        fromChild = output[0]
    }

    deinit {
        if toChild >= 0 { close(toChild) }
        close(fromChild)
    }

    /// Waits up to `timeout` seconds for one byte from the child; nil on end of file or timeout.
    public func readByte(timeout: Double) -> UInt8? {
        var poller = pollfd(fd: fromChild, events: Int16(POLLIN), revents: 0)
        var remaining = Int32(timeout * 1000)
        while true {
            let rc = poll(&poller, 1, remaining)
            if rc < 0 && errno == EINTR { remaining = min(remaining, 100); continue }
            guard rc > 0 else { return nil }
            var byte: UInt8 = 0
            let count = read(fromChild, &byte, 1)
            return count == 1 ? byte : nil
        }
    }

    /// Sends one byte and closes our end of its stdin.
    public func finish(sending byte: UInt8) {
        guard toChild >= 0 else { return }
        var byte = byte
        _ = write(toChild, &byte, 1)
        close(toChild)
        toChild = -1
    }

    /// Waits up to `timeout` seconds for the child to exit; its status, or nil if it still runs.
    @discardableResult
    public func wait(timeout: Double) -> Int32? {
        let deadline = timeout * 1000
        var waited = 0.0
        while true {
            var status: Int32 = 0
            let rc = waitpid(processID, &status, WNOHANG)
            if rc == processID { return status }
            if rc < 0 && errno != EINTR { return -1 }
            guard waited < deadline else { return nil }
            usleep(10_000)
            waited += 10
        }
    }
}
