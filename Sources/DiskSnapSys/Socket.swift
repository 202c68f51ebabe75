import CShim
#if canImport(Glibc)
import Glibc
#endif

/// A stream socket: a listener (Unix socket path or loopback TCP port) or an accepted
/// connection. Closed when the last reference goes.
public final class Socket: Sendable {
    public let descriptor: Int32
    /// What it is bound or connected to, for messages.
    public let name: String

    private init(descriptor: Int32, name: String) {
        self.descriptor = descriptor
        self.name = name
    }

    deinit { close(descriptor) }

    /// Listens on a Unix socket at `path`. An existing socket file is replaced only when no
    /// server answers on it (a server that was killed leaves its socket file behind).
    public static func listen(unixPath path: String) throws(SystemError) -> Socket {
        var address = try unixAddress(path)
        if let status = try FileSystem.statusIfExists(path) {
            guard status.mode & UInt32(S_IFMT) == UInt32(S_IFSOCK) else {
                throw SystemError(errno: EEXIST, operation: "bind (exists and is not a socket)", path: path)
            }
            // Only a refused connection proves the server gone; any other failure (a full
            // backlog's EAGAIN, EMFILE, EACCES) could be a live server's socket: not replaced.
            let probe = Result { () throws(SystemError) in try connect(address: address, path: path) }
            switch probe {
            case .success:
                throw SystemError(errno: EADDRINUSE, operation: "bind (another server answers there)", path: path)
            case .failure(let error) where error.errno == ECONNREFUSED:
                try FileSystem.removeIfExists(path)
            case .failure(let error):
                throw SystemError(errno: error.errno, operation: "bind (cannot tell whether a server still listens there)", path: path)
            }
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError.current("socket", path) }
        let listener = Socket(descriptor: fd, name: path)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw SystemError.current("bind", path) }
        guard Glibc.listen(fd, 64) == 0 else { throw SystemError.current("listen", path) }
        return listener
    }

    /// Connects to the Unix socket at `path`.
    public static func connect(unixPath path: String) throws(SystemError) -> Socket {
        try connect(address: unixAddress(path), path: path)
    }

    private static func unixAddress(_ path: String) throws(SystemError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw SystemError(errno: ENAMETOOLONG, operation: "socket address", path: path)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    private static func connect(address: sockaddr_un, path: String) throws(SystemError) -> Socket {
        var address = address
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError.current("socket", path) }
        let connection = Socket(descriptor: fd, name: path)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw SystemError.current("connect", path) }
        return connection
    }

    /// Listens on TCP `host:port` (an IPv4 address; port 0 picks a free one, see `port`).
    public static func listen(tcpHost host: String, port: UInt16) throws(SystemError) -> Socket {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            throw SystemError(errno: EINVAL, operation: "listen (not an IPv4 address)", path: host)
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError.current("socket", host) }
        let listener = Socket(descriptor: fd, name: "\(host):\(port)")
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw SystemError.current("bind", "\(host):\(port)") }
        guard Glibc.listen(fd, 64) == 0 else { throw SystemError.current("listen", "\(host):\(port)") }
        return listener
    }

    /// The local TCP port (after `listen(tcpHost:port: 0)`).
    public var port: UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    /// Waits for the next connection.
    public func accept() throws(SystemError) -> Socket {
        while true {
            let fd = Glibc.accept(descriptor, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                var one: Int32 = 1
                setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))  // fails harmlessly on Unix sockets
                return Socket(descriptor: fd, name: name)
            }
            if errno == EINTR || errno == ECONNABORTED { continue }
            throw SystemError.current("accept", name)
        }
    }

    /// Fills `buffer` from the stream. Returns false on end of stream before the first byte;
    /// throws when the stream ends inside the buffer.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Bool {
        var done = 0
        while done < buffer.count {
            let n = recv(descriptor, buffer.baseAddress! + done, buffer.count - done, 0)
            if n > 0 {
                done += n
            } else if n == 0 {
                if done == 0 { return false }
                throw SystemError(errno: ECONNRESET, operation: "read (stream ended inside a message)", path: name)
            } else if errno != EINTR {
                throw SystemError.current("recv", name)
            }
        }
        return true
    }

    /// Reads what has arrived (at least one byte, waiting for it); 0 at end of stream. A
    /// receive timeout that expires throws `ETIMEDOUT`.
    public func readSome(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        while true {
            let n = recv(descriptor, buffer.baseAddress!, buffer.count, 0)
            if n >= 0 { return n }
            if errno == EAGAIN || errno == EWOULDBLOCK { throw SystemError(errno: ETIMEDOUT, operation: "recv (no answer in time)", path: name) }
            if errno != EINTR { throw SystemError.current("recv", name) }
        }
    }

    /// Reads fail with `ETIMEDOUT` once `seconds` pass without a byte (0: wait forever).
    public func setReceiveTimeout(seconds: Double) {
        var time = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The process at the other end of a Unix socket (SO_PEERCRED), nil if unknown.
    public var peerProcessID: Int32? {
        let pid = ds_socket_peer_pid(descriptor)
        return pid > 0 ? pid : nil
    }

    /// Reads exactly `count` bytes; end of stream anywhere is an error.
    public func readBytes(_ count: Int) throws(SystemError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let result = bytes.withUnsafeMutableBytes { b in Result { () throws(SystemError) in try read(into: b) } }
        guard try result.get() || count == 0 else {
            throw SystemError(errno: ECONNRESET, operation: "read (stream ended)", path: name)
        }
        return bytes
    }

    public func write(_ buffer: UnsafeRawBufferPointer) throws(SystemError) {
        var done = 0
        while done < buffer.count {
            let n = send(descriptor, buffer.baseAddress! + done, buffer.count - done, Int32(MSG_NOSIGNAL))
            if n >= 0 {
                done += n
            } else if errno != EINTR {
                throw SystemError.current("send", name)
            }
        }
    }

    public func write(_ bytes: [UInt8]) throws(SystemError) {
        let result = bytes.withUnsafeBytes { b in Result { () throws(SystemError) in try write(b) } }
        try result.get()
    }

    /// Stops both directions: a thread blocked in `read` or `accept` on it returns.
    public func shutdown() { _ = Glibc.shutdown(descriptor, Int32(SHUT_RDWR)) }
}
