import CCurlGlue
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// An HTTP answer: status, headers (names lower-cased, in order), body.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    /// With `send(into:)`: how many body bytes went into the caller's buffer, and whether more came than fit.
    public var received = 0
    public var overflowed = false

    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.last { $0.name == lower }?.value
    }

    /// The headers of the last response in libcurl's header text (an interim `100` first).
    static func parseHeaders(_ text: String) -> [(name: String, value: String)] {
        var headers: [(name: String, value: String)] = []
        for line in text.split(separator: "\r\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("HTTP/") { headers = []; continue }
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].drop { $0 == " " || $0 == "\t" }
            headers.append((name, String(value.reversed().drop { $0 == " " || $0 == "\t" }.reversed())))
        }
        return headers
    }
}

/// The request never got an answer: refused, reset, timed out, a name that does not resolve.
public struct HTTPTransportError: Error, Sendable {
    public let curlCode: Int32
    public let message: String
}

/// A synchronous HTTP/1.1 client over libcurl (docs/DESIGN.md, "S3": why libcurl). Calls
/// may come from many threads at once: each takes an idle handle from the pool (its
/// connection kept alive for the next call) and gives it back.
public final class HTTPClient: Sendable {
    private let idle = Mutex<[UnsafeMutableRawPointerBox]>([])
    public let connectTimeout: Double
    public let timeout: Double

    public init(connectTimeout: Double = 10, timeout: Double = 300) {
        self.connectTimeout = connectTimeout
        self.timeout = timeout
    }

    deinit {
        for box in idle.withLock({ $0 }) { ds_http_handle_free(box.pointer) }
    }

    /// `bodyFile`: the body is the first `length` bytes of the open file `descriptor`, read as
    /// it is sent (a pack goes up without being held in memory); else `body`.
    /// `into`: the response body goes straight into this buffer (none in `body`); a body
    /// larger than it stops the transfer and comes back `overflowed`.
    public func send(method: String, url: String, headers: [(String, String)], body: [UInt8] = [],
                     bodyFile: (descriptor: Int32, length: Int)? = nil,
                     into destination: UnsafeMutableRawBufferPointer? = nil) throws(HTTPTransportError) -> HTTPResponse {
        var reason = [CChar](repeating: 0, count: 512)
        guard ds_http_load(&reason, reason.count) == 0 else { throw HTTPTransportError(curlCode: -1, message: cText(reason)) }
        let box: UnsafeMutableRawPointerBox
        if let idleBox = idle.withLock({ $0.popLast() }) {
            box = idleBox
        } else {
            guard let handle = ds_http_handle_new() else { throw HTTPTransportError(curlCode: -1, message: "libcurl could not make a handle") }
            box = UnsafeMutableRawPointerBox(pointer: handle)
        }
        var response = ds_http_response()
        let lines = headers.map { "\($0.0): \($0.1)" }
        var cLines: [UnsafePointer<CChar>?] = lines.map { UnsafePointer(strdup($0)) }
        defer { cLines.forEach { free(UnsafeMutablePointer(mutating: $0)) } }
        var target = ds_http_target(bytes: destination?.baseAddress?.assumingMemoryBound(to: UInt8.self), capacity: destination?.count ?? 0,
                                    length: 0, overflow: 0)
        let code = body.withUnsafeBufferPointer { bytes in
            cLines.withUnsafeMutableBufferPointer { headerArray in
                withUnsafeMutablePointer(to: &target) { targetPointer in
                    ds_http_perform(box.pointer, method, url, headerArray.baseAddress, headerArray.count, bytes.baseAddress,
                                    bodyFile?.length ?? bytes.count, bodyFile?.descriptor ?? -1,
                                    Int(connectTimeout * 1000), Int(timeout * 1000),
                                    destination == nil ? nil : ds_http_into, destination == nil ? nil : UnsafeMutableRawPointer(targetPointer), &response)
                }
            }
        }
        defer { ds_http_response_free(&response) }
        // A body larger than `into` stops the transfer (curl 23): an answer, `overflowed`.
        let overflowed = target.overflow != 0
        guard code == 0 || overflowed else {
            // A handle whose transfer failed may hold a broken connection: not reused.
            ds_http_handle_free(box.pointer)
            let message = withUnsafeBytes(of: response.error) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            throw HTTPTransportError(curlCode: code, message: message)
        }
        if overflowed {
            ds_http_handle_free(box.pointer)  // the transfer was cut: its connection is not reused
        } else {
            idle.withLock { $0.append(box) }
        }
        let headerText = response.headers.map { String(decoding: UnsafeBufferPointer(start: UnsafeRawPointer($0).assumingMemoryBound(to: UInt8.self), count: response.headers_length), as: UTF8.self) } ?? ""
        let bodyBytes = response.body.map { Array(UnsafeBufferPointer(start: $0, count: response.body_length)) } ?? []
        var answer = HTTPResponse(status: response.status, headers: HTTPResponse.parseHeaders(headerText), body: bodyBytes)
        answer.received = target.length
        answer.overflowed = overflowed
        return answer
    }
}

/// A libcurl handle, moved between threads only through the pool's lock.
struct UnsafeMutableRawPointerBox: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer?
}
