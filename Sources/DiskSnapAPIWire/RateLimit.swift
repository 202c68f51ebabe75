import Foundation
import Synchronization
import DiskSnapSys

/// A token bucket per access key, taken after the signature verified: one key cannot take
/// the server from the others. 200 requests a second, bursts of 1000
/// (`DISKSNAP_SERVE_RATE=N` sets N a second and bursts of 5N, for tests).
public final class RateLimit: Sendable {
    private let buckets = Mutex<[String: (tokens: Double, at: Double)]>([:])
    public let rate: Double
    let burst: Double

    public init(rate: Double? = nil) {
        let configured = rate ?? FileSystem.environment("DISKSNAP_SERVE_RATE").flatMap(Double.init) ?? 200
        self.rate = max(1, configured)
        burst = self.rate * 5
    }

    /// Takes one token of `key`'s bucket, or says how long until there is one.
    public func take(_ key: String, now: Double = Date().timeIntervalSinceReferenceDate) -> Double? {
        buckets.withLock { buckets in
            var bucket = buckets[key] ?? (burst, now)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
            defer { buckets[key] = bucket }
            guard bucket.tokens >= 1 else { return (1 - bucket.tokens) / rate }
            bucket.tokens -= 1
            return nil
        }
    }
}
