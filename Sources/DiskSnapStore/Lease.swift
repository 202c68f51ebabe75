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

    /// Takes the lease, or throws `Repository.Locked` naming its holder. `fresh`: the key is
    /// new (a shared holder's own, named by a random id), so it is created without a read.
    public static func acquire(_ key: BlobKey, in store: any BlobStore, purpose: String, duration: Int64 = defaultDuration,
                               skew: Int64 = defaultSkew, fresh: Bool = false,
                               clock: @escaping @Sendable () -> Int64 = { Lease.now() }) throws -> Lease {
        var currentVersion: BlobVersion?
        let now = clock()
        if !fresh {
            let current = try state(of: key, in: store, now: now, skew: skew)
            currentVersion = current.version
            if let holder = current.holder, case .held(_, let remaining) = LeasePolicy.decide(current: holder, now: now, skew: skew) {
                throw StoreError(.repositoryLocked, "\(store.location) is locked for \(holder.purpose) by process \(holder.processId) on \(holder.host) (lease \(key), \(remaining / 1000) s left unless renewed)")
            }
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

    /// What the lease at `key` says now: its version (nil: absent) and its live holder (nil
    /// when absent, run out more than `skew` ago, or held by a process of this boot that is
    /// gone). The one liveness test, for takers and for observers alike. A lease that cannot
    /// be read or decoded is no answer: `Repository.LockUnknown`, which callers read as held.
    public static func state(of key: BlobKey, in store: any BlobStore, now: Int64, skew: Int64) throws(StoreError) -> (version: BlobVersion?, holder: LeaseRecord?) {
        let bytes: [UInt8], version: BlobVersion
        do {
            (bytes, version) = try store.read(key)
        } catch let error as BlobStoreError where error.kind == .notFound {
            return (nil, nil)
        } catch {
            throw StoreError(.lockUnknown, "cannot tell whether the lease \(key) in \(store.location) is held: \((error as? any CodedError)?.message ?? "\(error)")")
        }
        guard let record = try? RecordJSON.decode(LeaseRecord.self, from: bytes, file: key.path) else {
            throw StoreError(.lockUnknown, "the lease \(key) in \(store.location) cannot be read: treated as held; remove it if no disksnap runs")
        }
        guard LeasePolicy.decide(current: record, now: now, skew: skew) != .take, !record.holderIsGoneFromThisBoot else { return (version, nil) }
        return (version, record)
    }

    public enum Mode: Sendable {
        /// One of several holders, excluded by an exclusive one.
        case shared
        /// The only holder, also excluding shared holders.
        case exclusive
        /// The only holder of a lock never taken shared (no listing of shared holders).
        case single
    }

    /// Takes the lock `name` in `store`; nil while a live holder it conflicts with has it.
    ///
    /// The exclusive holder's lease is `locks/<name>.lease`; each shared holder has its own,
    /// `locks/<name>/<random>.lease`. Both sides write first and look for the other after:
    /// a shared taker creates its lease, then reads the exclusive one; an exclusive taker
    /// takes its lease, then lists the shared ones. With read-after-write and list-after-write
    /// consistency, of two that race at least one sees the other and backs off (both may).
    /// Shared leases found dead are removed by the exclusive taker.
    public static func take(lock name: String, _ mode: Mode, in store: any BlobStore, purpose: String,
                            duration: Int64 = defaultDuration, skew: Int64 = defaultSkew,
                            clock: @escaping @Sendable () -> Int64 = { Lease.now() }) throws -> Lease? {
        let exclusiveKey = BlobKey(validated: "locks/\(name).lease")
        if mode == .shared {
            let mine = try acquire(BlobKey(validated: "locks/\(name)/\(RandomUUID.generate()).lease"), in: store, purpose: purpose,
                                   duration: duration, skew: skew, fresh: true, clock: clock)
            do {
                if try state(of: exclusiveKey, in: store, now: clock(), skew: skew).holder == nil { return mine }
            } catch {
                try? mine.remove()
                throw error
            }
            try? mine.remove()
            return nil
        }
        let lease: Lease
        do {
            lease = try acquire(exclusiveKey, in: store, purpose: purpose, duration: duration, skew: skew, clock: clock)
        } catch let error as StoreError where error.kind == .repositoryLocked {
            return nil
        }
        guard mode == .exclusive else { return lease }
        do {
            for blob in try store.listAll(prefix: "locks/\(name)/") where blob.key.path.hasSuffix(".lease") {
                if try state(of: blob.key, in: store, now: clock(), skew: skew).holder != nil {
                    try? lease.release()
                    return nil
                }
                try? store.delete(blob.key)  // its holder is gone
            }
        } catch {
            try? lease.release()
            throw error
        }
        return lease
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

    /// Removes the lease (one whose name is used once: a shared holder's, a creation's).
    public func remove() throws { try store.delete(key) }
}
