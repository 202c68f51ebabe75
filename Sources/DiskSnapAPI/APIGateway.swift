import DiskSnapAPIWire
import DiskSnapFormat
import DiskSnapCatalog

/// One server for several repositories, one per profile: a request goes to the repository
/// whose profile is its API family's (ECS to `ecs`, WUYING to `wuying`, Simple Application
/// Server to `swas`, Huawei CSS to `css`); with one repository, every family goes to it (its
/// profile's rules apply). Each repository has its own keys, policies and replay memory.
public struct APIGateway: Sendable {
    public let services: [APIService]

    /// Refuses two repositories of one profile: a request could not tell which it means.
    public init(services: [APIService]) throws {
        var seen: Set<Profile> = []
        for service in services where !seen.insert(service.profile).inserted {
            throw APIError("InvalidParameter.Repository", "two repositories of profile \(service.profile.rawValue) are served; give one repository per profile", status: 400)
        }
        self.services = services
    }

    /// The API family a request belongs to, from its path or version (before any check).
    static func family(of request: APIRequest) -> Profile? {
        if request.path.hasPrefix("/v1") { return .css }
        let version = request.header("x-acs-version") ?? request.parameters.last { $0.0 == "Version" }?.1
        switch version {
        case ECSOperations.version: return .ecs
        case ECDOperations.version: return .wuying
        case SWASOperations.version: return .swas
        default: return nil
        }
    }

    public func handle(_ request: APIRequest) async -> APIResponse {
        if services.count == 1 { return await services[0].handle(request) }
        let family = Self.family(of: request)
        if let service = services.first(where: { $0.profile == family }) { return await service.handle(request) }
        // No repository of that family: the first answers (a version it does not know is
        // refused there, after the signature) or, for a family, says none is served.
        if let family {
            let error = APIError(family == .css ? "APIGW.0101" : "InvalidVersion",
                                 "no repository of profile \(family.rawValue) is served here (serve --also-repo adds one)", status: family == .css ? 404 : 400)
            return APIService.answer(error.httpStatus, .object([
                family == .css ? ("error_code", .string(error.code)) : ("Code", .string(error.code)),
                family == .css ? ("error_msg", .string(error.message)) : ("Message", .string(error.message)),
            ]), root: "Error", xml: false)
        }
        return await services[0].handle(request)
    }
}

extension APIService {
    public var profile: Profile { Profile(rawValue: repository.config.profile ?? "ecs") ?? .ecs }
}
