import Foundation
import DiskSnapAPIWire
import Synchronization
import DiskSnapSys
import DiskSnapFormat
import DiskSnapStore
import DiskSnapCatalog
import DiskSnapEngine

/// An answer, whatever server sends it.
public struct APIResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]
}

/// What `disksnap serve` answers: every request verified (signature, key, freshness,
/// nonce), then routed by API family (the Alibaba RPC APIs by `Version`) to the operations
/// over one repository, each of them the engine's path that the CLI also takes.
public final class APIService: Sendable {
    public struct Settings: Sendable {
        public var region: String
        public var projectID: String
        public init(region: String = "local", projectID: String = "local") {
            self.region = region
            self.projectID = projectID
        }
    }

    public let repository: Repository
    let settings: Settings
    let replay = ReplayGuard()
    let rate = RateLimit()
    private let keys: Mutex<(credentials: APICredentials, stamp: FileStatus?)>
    /// Creates admitted and running in the background (their record says how far each is).
    let running = Atomic<Int>(0)
    let resets = Mutex(ResetState())
    /// Decoded records, read again only when their file changed.
    let recordCache = RecordCache()
    /// Serializes changes of the automatic-snapshot policies (the scheduler's among them).
    let policies = Mutex(())
    var policyStore: PolicyStore { PolicyStore(repository: repository) }

    /// A problem of background work (a create, a reset, a schedule) that has no client to
    /// answer: one line on standard error; the records say the rest.
    func logProblem(_ text: String) {
        var bytes = Array(("disksnap: " + text + "\n").utf8)
        _ = bytes.withUnsafeMutableBytes { FileSystem.writeRaw(descriptor: 2, $0) }
    }

    public init(repository: Repository, settings: Settings) throws {
        self.repository = repository
        self.settings = settings
        let path = APICredentials.path(repositoryRoot: repository.root)
        keys = Mutex((try APICredentials.load(repository: repository), try FileSystem.statusIfExists(path)))
    }

    /// The keys of the credentials file, read again when it changed (a key added or
    /// removed while the server runs counts from the next request on).
    func secret(for accessKeyId: String) throws -> String? {
        let path = APICredentials.path(repositoryRoot: repository.root)
        let now = try FileSystem.statusIfExists(path)
        return try keys.withLock { state in
            if state.stamp?.inode != now?.inode || state.stamp?.changeTime != now?.changeTime || state.stamp?.size != now?.size {
                state = (try APICredentials.load(repository: repository), now)
            }
            return state.credentials.secret(for: accessKeyId)
        }
    }

    public func handle(_ request: APIRequest) async -> APIResponse {
        let requestID = RandomUUID.generate().uppercased()
        var xml = false
        do {
            if request.path.hasPrefix("/v1") { return await handleHuawei(request, requestID: requestID) }
            guard request.path == "/" || request.path.isEmpty else {
                throw APIError("InvalidAction.NotFound", "nothing is served at \(request.path): the Alibaba Cloud APIs are at /", status: 404)
            }
            guard request.method == "POST" || request.method == "GET" else {
                throw APIError("UnsupportedHTTPMethod", "\(request.method) is not served; the RPC APIs take POST or GET", status: 400)
            }
            let caller: SignedCaller
            let action: String, version: String
            let parameters = Parameters(request.parameters)
            if request.header("authorization")?.hasPrefix("ACS3-") == true {
                caller = try RequestSignature.verifyACS3(request) { try? self.secret(for: $0) }
                action = request.header("x-acs-action") ?? ""
                version = request.header("x-acs-version") ?? ""
            } else {
                xml = parameters["Format"]?.uppercased() == "XML"
                caller = try RequestSignature.verifyRPC(request) { try? self.secret(for: $0) }
                action = parameters["Action"] ?? ""
                version = parameters["Version"] ?? ""
            }
            try replay.admit(caller)
            if let wait = rate.take(caller.accessKeyId) {
                throw APIError("Throttling.User", "Request was denied due to user flow control: key \(caller.accessKeyId) is over \(Int(rate.rate)) requests a second; try again in \(Int((wait * 1000).rounded(.up))) ms", status: 400)
            }
            guard !action.isEmpty else { throw APIError.missing("Action") }
            let body: APIValue
            switch version {
            case ECSOperations.version:
                body = try await ECSOperations(service: self).perform(action, parameters)
            case ECDOperations.version:
                body = try await ECDOperations(service: self).perform(action, parameters)
            case SWASOperations.version:
                body = try await SWASOperations(service: self).perform(action, parameters)
            case "":
                throw APIError.missing("Version")
            default:
                throw APIError("InvalidVersion", "API version \(version) is not served here (ECS \(ECSOperations.version), ECD \(ECDOperations.version) and SWAS \(SWASOperations.version) are; docs/API.md)", status: 400)
            }
            var members: [(String, APIValue)] = [("RequestId", .string(requestID))]
            if case .object(let rest) = body { members += rest }
            return Self.answer(200, .object(members), root: action + "Response", xml: xml)
        } catch {
            let coded = (error as? any CodedError)
            let code = coded?.code ?? "InternalError"
            let message = coded?.message ?? "an unexpected error: \(error)"
            let status = coded?.httpStatus ?? 500
            let body: APIValue = .object([
                ("RequestId", .string(requestID)), ("HostId", .string(settings.region)),
                ("Code", .string(code)), ("Message", .string(message)),
                ("Recommend", .string("docs/API.md and docs/CLI.md list every code")),
            ])
            return Self.answer(status, body, root: "Error", xml: xml)
        }
    }

    /// Huawei Cloud's REST APIs: `SDK-HMAC-SHA256`, then `/v1.0/{project_id}/clusters/...`;
    /// errors as `{"error_code", "error_msg"}` with `X-Request-Id`, which its SDK reads.
    func handleHuawei(_ request: APIRequest, requestID: String) async -> APIResponse {
        var answer: APIResponse
        do {
            let caller = try RequestSignature.verifyHuawei(request) { try? self.secret(for: $0) }
            try replay.admit(caller)
            if rate.take(caller.accessKeyId) != nil {
                throw APIError("APIGW.0308", "The throttling threshold has been reached: key \(caller.accessKeyId) is over \(Int(rate.rate)) requests a second", status: 429)
            }
            let parts = request.path.split(separator: "/", omittingEmptySubsequences: false).map { FormEncoding.percentDecodePath(String($0)) }
            // "", "v1.0", project, "clusters", cluster, rest...
            guard parts.count >= 6, parts[1] == "v1.0", parts[3] == "clusters", !parts[4].isEmpty else {
                throw APIError("APIGW.0101", "the API \(request.method) \(request.path) does not exist here (docs/API.md lists what is served)", status: 404)
            }
            guard parts[2] == settings.projectID else {
                throw APIError("APIGW.0101", "the project \(parts[2]) does not exist here; this server is project \(settings.projectID)", status: 404)
            }
            let (status, body) = try await CSSOperations(service: self).perform(method: request.method, cluster: parts[4], rest: Array(parts[5...]), body: request.body)
            answer = Self.answer(status, body, root: "", xml: false)
        } catch {
            let coded = (error as? any CodedError)
            answer = Self.answer(coded?.httpStatus ?? 500, .object([
                ("error_code", .string(coded?.code ?? "InternalError")),
                ("error_msg", .string(coded?.message ?? "an unexpected error: \(error)")),
            ]), root: "", xml: false)
        }
        answer.headers.append(("X-Request-Id", requestID))
        return answer
    }

    static func answer(_ status: Int, _ body: APIValue, root: String, xml: Bool) -> APIResponse {
        if xml {
            return APIResponse(status: status, headers: [("Content-Type", "text/xml;charset=utf-8")], body: Array(body.xml(root: root).utf8))
        }
        return APIResponse(status: status, headers: [("Content-Type", "application/json;charset=utf-8")], body: Array(body.json.utf8))
    }

    /// Waits until no create or reset this server started is running.
    func drain() async {
        var told = false
        while true {
            let creates = running.load(ordering: .relaxed), resetting = resets.withLock { $0.running.count }
            if creates + resetting == 0 { return }
            if !told {
                logProblem("stopping: waiting for \(creates) snapshot run(s) and \(resetting) reset(s) to finish")
                told = true
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    /// Runs blocking engine work on a thread of its own, off the server's event loops.
    func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result { try body() })
            }
        }
    }

    /// Hands an admitted create to a thread of its own: it reads the disk and commits (or
    /// marks the record failed) while the caller has its answer already.
    func runInBackground(_ admitted: AdmittedCreate...) { runInBackground(admitted) }

    /// Several, one after another (a group: the disks of one instance).
    func runInBackground(_ admitted: [AdmittedCreate]) {
        running.wrappingAdd(1, ordering: .relaxed)
        Thread.detachNewThread {
            for one in admitted {
                do { _ = try one.run() } catch { self.logProblem("snapshot \(one.record.snapshotId) failed: \((error as? any CodedError)?.description ?? "\(error)")") }
            }
            self.running.wrappingSubtract(1, ordering: .relaxed)
        }
    }
}
