import Foundation
import Synchronization
import ArgumentParser
import DiskSnapSys
import DiskSnapFormat
import DiskSnapAPI
import DiskSnapAPIWire

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Answer the cloud documents' HTTP APIs for this repository, for the official SDKs (docs/API.md).",
        discussion: "Every request must be signed with a key pair of the repository's credentials file (--new-key makes one). An address beyond loopback needs --tls-cert and --tls-key.")

    @OptionGroup var global: GlobalOptions
    @Option(help: ArgumentHelp("Address to listen on (port 0: any free port, printed when listening).", valueName: "host:port"))
    var listen = "127.0.0.1:8080"
    @Option(help: "The region the Alibaba Cloud clients name (RegionId); another region is not found.")
    var region = "local"
    @Option(help: "The project id the Huawei Cloud clients name in their paths.")
    var projectId = "local"
    @Option(help: ArgumentHelp("Serve this repository too (repeatable): each API family goes to the repository of its profile (ECS: ecs, WUYING: wuying, SWAS: swas, Huawei CSS: css).", valueName: "repo"))
    var alsoRepo: [String] = []
    @Flag(help: "Add a new key pair to the credentials file, print it, and exit.")
    var newKey = false
    @Option(help: ArgumentHelp("Remove this key pair from the credentials file and exit.", valueName: "access-key-id"))
    var removeKey: String?
    @Option(help: ArgumentHelp("Serve HTTPS with this certificate chain (PEM); needed to listen beyond loopback.", valueName: "file"))
    var tlsCert: String?
    @Option(help: ArgumentHelp("The certificate's private key (PEM).", valueName: "file"))
    var tlsKey: String?
    @Flag(help: "With --new-key: print {\"AccessKeyId\", \"AccessKeySecret\"} as JSON.")
    var json = false

    func run() throws {
        try runReporting(json: json) {
            let repository = try global.openRepository()
            if newKey || removeKey != nil {
                guard !(newKey && removeKey != nil) else {
                    throw APIError("InvalidParameter.Key", "--new-key and --remove-key are separate calls", status: 400)
                }
                var credentials = try APICredentials.load(repository: repository)
                if let removeKey {
                    guard credentials.keys.contains(where: { $0.accessKeyId == removeKey }) else {
                        throw APIError("InvalidAccessKeyId.NotFound", "no key \(removeKey) in \(APICredentials.path(repositoryRoot: repository.root))", status: 404)
                    }
                    credentials.keys.removeAll { $0.accessKeyId == removeKey }
                    try credentials.save(repository: repository)
                    Output.line("removed \(removeKey)")
                    return
                }
                let key = APICredentials.generateKey()
                credentials.keys.append(key)
                try credentials.save(repository: repository)
                if json {
                    Output.json(NewKeyResponse(accessKeyId: key.accessKeyId, accessKeySecret: key.accessKeySecret))
                } else {
                    Output.line("AccessKeyId:     \(key.accessKeyId)\nAccessKeySecret: \(key.accessKeySecret)")
                }
                return
            }
            let settings = APIService.Settings(region: region, projectID: projectId)
            let services = try [APIService(repository: repository, settings: settings)]
                + alsoRepo.map { try APIService(repository: try GlobalOptions.openRepository(at: $0, keys: global.secrets.provider), settings: settings) }
            let gateway = try APIGateway(services: services)
            guard (tlsCert == nil) == (tlsKey == nil) else {
                throw APIError("InvalidParameter.TLS", "--tls-cert and --tls-key go together", status: 400)
            }
            let tls = tlsCert.map { APIServer.TLSFiles(certificateChain: $0, privateKey: tlsKey!) }
            let server = try APIServer(gateway: gateway, listen: listen, tls: tls)
            let finished = DispatchSemaphore(value: 0)
            let failure = Mutex<(any Error)?>(nil)
            Task {
                do {
                    try await server.run { address in Output.log("serving \(services.map { "\($0.repository.location) (\($0.profile.rawValue))" }.joined(separator: ", ")) on \(address)") }
                } catch {
                    failure.withLock { $0 = error }
                }
                finished.signal()
            }
            finished.wait()
            if let error = failure.withLock({ $0 }) { throw error }
        }
    }
}

struct NewKeyResponse: Encodable {
    var accessKeyId: String
    var accessKeySecret: String
}
