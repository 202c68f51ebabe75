import Foundation
import Hummingbird
import HummingbirdCore
import HTTPTypes
import NIOCore
import DiskSnapSys

/// `disksnap serve`'s HTTP server: Hummingbird (SwiftNIO) carries requests to `APIService`,
/// with the bounds that keep a slow or hostile client from holding it: headers at most
/// 16 KiB in 100 fields, bodies at most 1 MiB, a connection idle for 30 s closed, at most
/// 512 connections at once.
public struct APIServer: Sendable {
    public static let maxBodyBytes = 1 << 20
    public static let maxConnections = 512
    /// A connection that sends nothing for this long is closed (`DISKSNAP_SERVE_IDLE_SECONDS`
    /// shortens it for tests).
    static var idleSeconds: Int64 {
        FileSystem.environment("DISKSNAP_SERVE_IDLE_SECONDS").flatMap { Int64($0) }.map { max(1, $0) } ?? 30
    }

    let service: APIService
    let host: String
    let port: Int

    public init(service: APIService, listen: String) throws {
        (host, port) = try Self.parseListen(listen)
        self.service = service
    }

    /// `HOST:PORT` (`[V6]:PORT`); only a loopback host is served without TLS, which this
    /// version does not have yet: another host is refused (docs/API.md, "Security").
    static func parseListen(_ text: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw APIError("InvalidParameter.Listen", "--listen '\(text)' is not HOST:PORT", status: 400)
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let loopback = host == "localhost" || host == "::1" || host.hasPrefix("127.")
        guard loopback else {
            throw APIError("Serve.TLSRequired", "--listen \(text) is not a loopback address: serving beyond this host needs TLS, which this disksnap does not offer yet; listen on 127.0.0.1 and put a TLS proxy in front", status: 400)
        }
        return (host == "localhost" ? "127.0.0.1" : host, port)
    }

    /// Serves until the process is told to stop (SIGINT, SIGTERM); `ready` hears the
    /// address bound (the port chosen when 0 was asked for).
    public func run(ready: @escaping @Sendable (String) -> Void) async throws {
        let responder = Responder(service: service)
        let decoder = HTTP1Channel.Configuration.DecoderConfiguration(maxHeaderFieldSize: 8 << 10, maxHeaderListSize: 16 << 10, maxHeaderFieldCount: 100)
        let app = Application(
            responder: responder,
            server: .http1(configuration: .init(idleTimeout: .seconds(Self.idleSeconds), httpDecoderConfiguration: decoder)),
            configuration: .init(address: .hostname(host, port: port), serverName: "disksnap",
                                 availableConnectionsDelegate: MaximumAvailableConnections(Self.maxConnections)),
            onServerRunning: { channel in
                ready(channel.localAddress.map { "\($0.ipAddress ?? host):\($0.port ?? port)" } ?? "\(host):\(port)")
            })
        try await app.runService()
    }

    struct Responder: HTTPResponder {
        typealias Context = BasicRequestContext
        let service: APIService

        func respond(to request: Request, context: Context) async throws -> Response {
            var request = request
            let body: ByteBuffer
            do {
                body = try await request.collectBody(upTo: APIServer.maxBodyBytes)
            } catch {
                let refused = APIService.answer(413, .object([("Code", .string("RequestTooLarge")), ("Message", .string("the request body is over \(APIServer.maxBodyBytes) bytes"))]), root: "Error", xml: false)
                return Self.response(refused)
            }
            let apiRequest = APIRequest(method: request.method.rawValue, path: request.uri.path, rawQuery: request.uri.query ?? "",
                                        headers: request.headers.map { ($0.name.rawName, $0.value) }
                                            + [("host", request.head.authority ?? "")].filter { _ in request.headers[.init("Host")!] == nil && request.head.authority != nil },
                                        body: Array(buffer: body))
            return Self.response(await service.handle(apiRequest))
        }

        static func response(_ answer: APIResponse) -> Response {
            var fields = HTTPFields()
            for (name, value) in answer.headers { if let key = HTTPField.Name(name) { fields[key] = value } }
            return Response(status: .init(code: answer.status), headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: answer.body)))
        }
    }
}
