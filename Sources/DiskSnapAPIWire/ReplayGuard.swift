import Foundation
import Synchronization

/// Refuses a signed request seen before (the same key and nonce within the window) or one
/// whose signed time is too far from now: a captured request cannot be sent again. Nonces
/// are kept for twice the allowed skew, only for requests whose signature verified, and at
/// most `capacity` of them: past that, new requests are refused as throttled rather than a
/// nonce forgotten early (which would let a replay through).
public final class ReplayGuard: Sendable {
    private let seen = Mutex<(nonces: [String: Date], order: [(String, Date)], head: Int)>(([:], [], 0))
    let capacity: Int
    let skew: TimeInterval

    public init(capacity: Int = 1_000_000, skew: TimeInterval = RequestSignature.allowedSkew) {
        self.capacity = capacity
        self.skew = skew
    }

    public func admit(_ caller: SignedCaller, now: Date = Date()) throws(APIError) {
        guard abs(caller.date.timeIntervalSince(now)) <= skew else {
            throw APIError("InvalidTimeStamp.Expired", "the request was signed at \(ISO8601DateFormatter().string(from: caller.date)), more than \(Int(skew / 60)) minutes from this server's clock", status: 400)
        }
        guard let nonce = caller.nonce else { return }
        guard !nonce.isEmpty, nonce.utf8.count <= 128 else {
            throw APIError("InvalidParameter.SignatureNonce", "the signature nonce is empty or longer than 128 bytes", status: 400)
        }
        let key = caller.accessKeyId + "\u{0}" + nonce
        let verdict: APIError? = seen.withLock { state in
            // Forget what is past the window (entries are in arrival order).
            let horizon = now.addingTimeInterval(-2 * skew)
            while state.head < state.order.count, state.order[state.head].1 < horizon {
                let (old, at) = state.order[state.head]
                if state.nonces[old] == at { state.nonces[old] = nil }
                state.head += 1
            }
            if state.head > 4096, state.head * 2 > state.order.count {
                state.order.removeFirst(state.head)
                state.head = 0
            }
            if state.nonces[key] != nil {
                return APIError("SignatureNonceUsed", "the signature nonce \(nonce) was used by an earlier request", status: 400)
            }
            guard state.nonces.count < capacity else {
                return APIError("Throttling", "too many requests in the last \(Int(2 * skew / 60)) minutes; try again later", status: 503)
            }
            state.nonces[key] = now
            state.order.append((key, now))
            return nil
        }
        if let verdict { throw verdict }
    }
}
