#if canImport(Glibc)
import Glibc
#endif

/// Path operations. Publication is always temp file -> fsync -> rename -> fsync(directory),
/// so a reader never sees a half-written file (docs/DESIGN.md, "Write order").
public enum FileSystem {
    public static func status(_ path: String) throws(SystemError) -> FileStatus {
        var st = stat()
        _ = try retryingEINTR("stat", path) { stat(path, &st) }
        return FileStatus(st)
    }

    /// nil when nothing exists at `path`.
    public static func statusIfExists(_ path: String) throws(SystemError) -> FileStatus? {
        do { return try status(path) } catch where error.errno == ENOENT { return nil }
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public static func makeDirectory(_ path: String, permissions: UInt32 = 0o700) throws(SystemError) {
        if mkdir(path, permissions) != 0 && errno != EEXIST {
            throw SystemError.current("mkdir", path)
        }
    }

    /// mkdir -p.
    public static func makeDirectories(_ path: String) throws(SystemError) {
        var prefix = path.hasPrefix("/") ? "/" : ""
        for part in path.split(separator: "/") {
            prefix += part + "/"
            try makeDirectory(prefix)
        }
    }

    public static func rename(_ from: String, to: String) throws(SystemError) {
        TestHooks.durableStep()
        _ = try retryingEINTR("rename to \(to)", from) { Glibc.rename(from, to) }
    }

    public static func remove(_ path: String) throws(SystemError) {
        TestHooks.durableStep()
        _ = try retryingEINTR("unlink", path) { unlink(path) }
    }

    /// Removes `path`; no error when it is already gone.
    public static func removeIfExists(_ path: String) throws(SystemError) {
        TestHooks.durableStep()
        if unlink(path) != 0 && errno != ENOENT { throw SystemError.current("unlink", path) }
    }

    public static func syncDirectory(_ path: String) throws(SystemError) {
        let directory = try OpenFile(path: path, mode: .directory)
        try directory.sync()
    }

    /// Names in `path`, without `.` and `..`, sorted.
    public static func listDirectory(_ path: String) throws(SystemError) -> [String] {
        guard let dir = opendir(path) else { throw SystemError.current("opendir", path) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// The whole file, read until end of file (files under /proc report a size of 0).
    public static func readFile(_ path: String) throws(SystemError) -> [UInt8] {
        let file = try OpenFile(path: path)
        var bytes = try file.readBytes(count: max(Int(try file.status().size), 4096), at: 0)
        while true {
            let more = try file.readBytes(count: 65536, at: UInt64(bytes.count))
            if more.isEmpty { return bytes }
            bytes += more
        }
    }

    /// Writes `bytes` to `path` atomically: a temporary file in `temporaryDirectory` (same
    /// filesystem), fsync, rename over `path`, fsync of `path`'s directory. Not `durable`:
    /// whole or absent after a crash of this process, without the fsyncs (a file that
    /// describes running processes, which a crash of the host ends too).
    public static func writeAtomically(_ bytes: [UInt8], to path: String, temporaryDirectory: String, durable: Bool = true) throws(SystemError) {
        let temporary = temporaryDirectory + "/" + uniqueTemporaryName(for: path)
        do {
            let file = try OpenFile(path: temporary, mode: [.writeOnly, .create, .exclusive], permissions: 0o600)
            try file.write(bytes, at: 0)
            if durable { try file.sync() }
            try rename(temporary, to: path)
        } catch {
            try? removeIfExists(temporary)
            throw error
        }
        if durable { try syncDirectory(directoryName(of: path)) }
    }

    /// A name no other process will choose: the base name, the pid and a random suffix.
    public static func uniqueTemporaryName(for path: String) -> String {
        let base = path.split(separator: "/").last.map(String.init) ?? "file"
        return "\(base).\(getpid()).\(UInt64.random(in: 0...UInt64.max) & 0xffff_ffff).tmp"
    }

    /// The last part of `path` (`a/b.idx` -> `b.idx`).
    public static func baseName(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }

    public static func directoryName(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// The absolute form of `path` (no symlink resolution).
    public static func absolutePath(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
        guard getcwd(&buffer, buffer.count) != nil else { return path }
        let cwd = String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return cwd == "/" ? "/" + path : cwd + "/" + path
    }

    public static var processID: Int32 { getpid() }

    /// True while process `pid` may exist on this machine: only ESRCH from kill(pid, 0)
    /// says it does not (EPERM means it exists; any other failure is no proof of death).
    public static func processIsAlive(_ pid: Int32) -> Bool {
        guard pid > 0 else { return false }
        return kill(pid, 0) == 0 || errno != ESRCH
    }

    public static func environment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    public static func isTerminal(_ descriptor: Int32) -> Bool { isatty(descriptor) == 1 }
}

extension FileSystem {
    /// link(2): publishes `from` at `to`, failing with EEXIST when `to` exists.
    public static func link(_ from: String, to: String) throws(SystemError) {
        TestHooks.durableStep()
        _ = try retryingEINTR("link to \(to)", from) { Glibc.link(from, to) }
    }

    public static func removeDirectory(_ path: String) throws(SystemError) {
        _ = try retryingEINTR("rmdir", path) { rmdir(path) }
    }
}

extension FileSystem {
    /// write(2) of a whole buffer to a descriptor (standard output and error); errors ignored.
    public static func writeRaw(descriptor: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
        var done = 0
        while done < buffer.count {
            let n = Glibc.write(descriptor, buffer.baseAddress! + done, buffer.count - done)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            done += n
        }
        return done
    }
}

/// Online CPU count.
public enum ProcessInfoCores {
    public static var count: Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }
}
