import Foundation
import DiskSnapAPIWire
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import HTTPTypes
import NIOCore
import DiskSnapSys

/// `disksnap serve`'s HTTP server: Hummingbird (SwiftNIO; TLS by swift-nio-ssl) carries
/// requests to `APIService`, with the bounds that keep a slow or hostile client from holding it: headers at most
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

    /// A certificate chain and its private key (PEM files).
    public struct TLSFiles: Sendable {
        public var certificateChain: String
        public var privateKey: String
        public init(certificateChain: String, privateKey: String) {
            self.certificateChain = certificateChain
            self.privateKey = privateKey
        }
    }

    let gateway: APIGateway
    let host: String
    let port: Int
    let tls: TLSConfiguration?

    /// Refuses a host that is not loopback without TLS, and TLS files that do not load.
    public init(gateway: APIGateway, listen: String, tls files: TLSFiles?) throws {
        (host, port) = try Self.parseListen(listen)
        if !Self.isLoopback(host), files == nil {
            throw APIError("Serve.TLSRequired", "--listen \(listen) is not a loopback address: serving beyond this host needs TLS (--tls-cert and --tls-key)", status: 400)
        }
        self.gateway = gateway
        tls = try files.map(Self.configuration)
    }

    static func configuration(_ files: TLSFiles) throws -> TLSConfiguration {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(files.certificateChain)
            guard !chain.isEmpty else { throw APIError("Serve.TLSFiles", "no certificate in \(files.certificateChain)", status: 400) }
        } catch let error as APIError {
            throw error
        } catch {
            throw APIError("Serve.TLSFiles", "the certificate chain \(files.certificateChain) does not load as PEM: \(error)", status: 400)
        }
        do {
            key = try NIOSSLPrivateKey(file: files.privateKey, format: .pem)
        } catch {
            throw APIError("Serve.TLSFiles", "the private key \(files.privateKey) does not load as PEM: \(error)", status: 400)
        }
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        return configuration
    }

    static func isLoopback(_ host: String) -> Bool { host == "::1" || host.hasPrefix("127.") }

    /// `HOST:PORT` (`[V6]:PORT`; `localhost` is 127.0.0.1).
    static func parseListen(_ text: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw APIError("InvalidParameter.Listen", "--listen '\(text)' is not HOST:PORT", status: 400)
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw APIError("InvalidParameter.Listen", "--listen '\(text)' names no host", status: 400) }
        return (host == "localhost" ? "127.0.0.1" : host, port)
    }

    /// Serves until the process is told to stop (SIGINT, SIGTERM); `ready` hears the
    /// address bound (the port chosen when 0 was asked for).
    public func run(ready: @escaping @Sendable (String) -> Void) async throws {
        let responder = Responder(gateway: gateway)
        let decoder = HTTP1Channel.Configuration.DecoderConfiguration(maxHeaderFieldSize: 8 << 10, maxHeaderListSize: 16 << 10, maxHeaderFieldCount: 100)
        let http1 = HTTPServerBuilder.http1(configuration: .init(idleTimeout: .seconds(Self.idleSeconds), httpDecoderConfiguration: decoder))
        let app = Application(
            responder: responder,
            server: try tls.map { try .tls(http1, tlsConfiguration: $0) } ?? http1,
            configuration: .init(address: .hostname(host, port: port), serverName: "disksnap",
                                 availableConnectionsDelegate: MaximumAvailableConnections(Self.maxConnections)),
            onServerRunning: { channel in
                let scheme = tls == nil ? "http" : "https"
                ready(scheme + "://" + (channel.localAddress.map { "\($0.ipAddress ?? host):\($0.port ?? port)" } ?? "\(host):\(port)"))
            })
        // The automatic-snapshot policies run while the server does.
        let schedules = gateway.services.map { service in Task { await service.runSchedules() } }
        defer { schedules.forEach { $0.cancel() } }
        try await app.runService()
        // Stopped (SIGTERM, SIGINT): what was admitted finishes before the process ends, so a
        // stop never turns an answered create into a failed one. kill -9 does not wait: those
        // records then read as failed, as after any killed create.
        for service in gateway.services { await service.drain() }
    }

    struct Responder: HTTPResponder {
        typealias Context = BasicRequestContext
        let gateway: APIGateway

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
            return Self.response(await gateway.handle(apiRequest))
        }

        static func response(_ answer: APIResponse) -> Response {
            var fields = HTTPFields()
            for (name, value) in answer.headers { if let key = HTTPField.Name(name) { fields[key] = value } }
            return Response(status: .init(code: answer.status), headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: answer.body)))
        }
    }
}
