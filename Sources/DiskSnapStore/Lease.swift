import Foundation
import DiskSnapSys
import DiskSnapFormat

/// A lock held in a blob store (docs/DESIGN.md, "Leases"): on a bucket there is no flock,
/// and a process that dies cannot release anything, so a lock is a lease that runs out.
///
/// The lease blob says who holds it and until when. It is taken with a create-only write
/// when absent, or by a compare-and-swap on the version read when it has run out (past its
/// expiry by more than `skew`, the clock difference hosts may have); renewed by a
/// compare-and-swap on the holder's own version (one that fails means the lease was lost:
/// the holder must stop); released by writing it expired, also by compare-and-swap. Any
/// doubt (a lease that cannot be read or decoded) reads as "held".
public struct LeaseRecord: Codable, Sendable, Equatable {
    public var owner: String
    public var host: String
    public var processId: Int32
    public var purpose: String
    /// Milliseconds since 1970.
    public var acquiredAt: Int64
    public var expiresAt: Int64
    /// The holder's kernel boot id (`/proc/sys/kernel/random/boot_id`): unique to one boot of
    /// one host, unlike a host name (cloned VMs share those). With it a holder on this very
    /// boot whose process is gone is known dead before its lease runs out.
    public var bootId: String?

    public init(owner: String, host: String, processId: Int32, purpose: String, acquiredAt: Int64, expiresAt: Int64) {
        (self.owner, self.host, self.processId, self.purpose, self.acquiredAt, self.expiresAt) = (owner, host, processId, purpose, acquiredAt, expiresAt)
    }

    /// This boot's id, nil if the kernel does not say.
    public static let thisBoot: String? = (try? FileSystem.readFile("/proc/sys/kernel/random/boot_id"))
        .map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
        .flatMap { $0.isEmpty ? nil : $0 }

    /// Held by a process of this boot that no longer exists (`kill(pid, 0)` fails with
    /// ESRCH; any other answer, or another boot, is not proof).
    public var holderIsGoneFromThisBoot: Bool {
        guard let bootId, bootId == Self.thisBoot, processId > 0 else { return false }
        return kill(processId, 0) == -1 && errno == ESRCH
    }
}

/// Whether a lease may be taken (pure; unit-tested).
public enum LeasePolicy {
    public enum Decision: Equatable, Sendable {
        case take
        case held(by: LeaseRecord, forMilliseconds: Int64)
    }

    public static func decide(current: LeaseRecord?, now: Int64, skew: Int64) -> Decision {
        guard let current else { return .take }
        if now > current.expiresAt + skew { return .take }
        return .held(by: current, forMilliseconds: current.expiresAt + skew - now)
    }
}

public final class Lease {
    public static let defaultDuration: Int64 = 60_000
    /// Hosts' clocks may differ by this much (NTP keeps them within milliseconds; a VM
    /// resumed from a pause may not be).
    public static let defaultSkew: Int64 = 30_000

    public let store: any BlobStore
    public let key: BlobKey
    public private(set) var record: LeaseRecord
    private var version: BlobVersion
    private let clock: @Sendable () -> Int64

    public static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    private init(store: any BlobStore, key: BlobKey, record: LeaseRecord, version: BlobVersion, clock: @escaping @Sendable () -> Int64) {
        self.store = store
        self.key = key
        self.record = record
        self.version = version
        self.clock = clock
    }

    /// Takes the lease, or throws `Repository.Locked` naming its holder.
    public static func acquire(_ key: BlobKey, in store: any BlobStore, purpose: String, duration: Int64 = defaultDuration,
                               skew: Int64 = defaultSkew, clock: @escaping @Sendable () -> Int64 = { Lease.now() }) throws -> Lease {
        var currentVersion: BlobVersion?
        var current: LeaseRecord?
        do {
            let (bytes, version) = try store.read(key)
            currentVersion = version
            do {
                current = try RecordJSON.decode(LeaseRecord.self, from: bytes, file: key.path)
            } catch {
                throw StoreError(.lockUnknown, "the lease \(key) in \(store.location) cannot be read (\(error)): treated as held; remove it if no disksnap runs")
            }
        } catch let error as BlobStoreError where error.kind == .notFound {}
        let now = clock()
        if case .held(let holder, let remaining) = LeasePolicy.decide(current: current, now: now, skew: skew), !holder.holderIsGoneFromThisBoot {
            throw StoreError(.repositoryLocked, "\(store.location) is locked for \(holder.purpose) by process \(holder.processId) on \(holder.host) (lease \(key), \(remaining / 1000) s left unless renewed)")
        }
        var mine = LeaseRecord(owner: RandomUUID.generate(), host: ProcessInfo.processInfo.hostName, processId: getpid(),
                               purpose: purpose, acquiredAt: now, expiresAt: now + duration)
        mine.bootId = LeaseRecord.thisBoot
        do {
            let version = try store.replace(key, RecordJSON.encode(mine), ifVersion: currentVersion)
            return Lease(store: store, key: key, record: mine, version: version, clock: clock)
        } catch let error as BlobStoreError where error.kind == .versionMismatch || error.kind == .alreadyExists {
            throw StoreError(.repositoryLocked, "\(store.location): another process took the lease \(key) for itself at the same moment")
        }
    }

    /// Extends the lease; throws `Repository.Locked` if it was lost (taken over after it ran
    /// out): the holder must stop what it does under it.
    public func renew(duration: Int64 = defaultDuration) throws {
        var renewed = record
        renewed.expiresAt = clock() + duration
        do {
            version = try store.replace(key, RecordJSON.encode(renewed), ifVersion: version)
            record = renewed
        } catch let error as BlobStoreError where error.kind == .versionMismatch {
            throw StoreError(.repositoryLocked, "the lease \(key) in \(store.location) was taken over by another process after it ran out")
        }
    }

    /// Gives the lease up (written expired, so the next taker needs no wait). A lease lost
    /// meanwhile is left to its new holder.
    public func release() throws {
        var released = record
        released.expiresAt = 0
        do {
            version = try store.replace(key, RecordJSON.encode(released), ifVersion: version)
        } catch let error as BlobStoreError where error.kind == .versionMismatch {}
    }
}
