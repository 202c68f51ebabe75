#if canImport(Glibc)
import Glibc
#endif

/// The controlling terminal, for a passphrase typed by hand.
public enum Terminal {
    /// Writes `prompt` to the terminal and reads one line with echo off (restored after,
    /// also when the read fails); nil when the process has no terminal to ask on.
    public static func readSecret(prompt: String) throws(SystemError) -> String? {
        guard FileSystem.isTerminal(0) || FileSystem.isTerminal(2) else { return nil }
        let tty = Glibc.open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard tty >= 0 else { return nil }
        defer { Glibc.close(tty) }
        var saved = termios()
        guard tcgetattr(tty, &saved) == 0 else { return nil }
        var quiet = saved
        quiet.c_lflag &= ~tcflag_t(ECHO)
        quiet.c_lflag |= tcflag_t(ECHONL)
        guard tcsetattr(tty, TCSAFLUSH, &quiet) == 0 else { throw SystemError.current("tcsetattr", "/dev/tty") }
        defer { _ = tcsetattr(tty, TCSAFLUSH, &saved) }
        var text = Array(prompt.utf8)
        _ = text.withUnsafeMutableBytes { FileSystem.writeRaw(descriptor: tty, $0) }
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let n = Glibc.read(tty, &byte, 1)
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw SystemError.current("read", "/dev/tty") }
            if n == 0 || byte == UInt8(ascii: "\n") { break }
            line.append(byte)
            if line.count > 4096 { break }
        }
        return String(decoding: line, as: UTF8.self)
    }
}
