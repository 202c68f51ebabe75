import Synchronization
import Foundation
import DiskSnapSys

/// A lock a command holds (`Repository.lock`, `tryLock`, ...): this host's flock, and for a
/// repository in a bucket also a lease there (`Lease.take`, docs/DESIGN.md, "Leases"),
/// renewed by a thread every third of its duration while held, so that every host sees it
/// and a killed holder's lease runs out. Released when the holder lets go of it; a lease
/// whose name is used once (a shared holder's, a creation's) is then removed.
public final class HeldLock: Sendable {
    public let file: FileLock
    private let renewer: LeaseRenewer?

    public var path: String { file.path }

    /// How long a lease lasts unless renewed, and the clock skew allowed for: 60 s and 30 s;
    /// `DISKSNAP_LEASE_SECONDS` shortens both (the skew to at most the duration), for tests.
    public static var leaseMilliseconds: Int64 {
        FileSystem.environment("DISKSNAP_LEASE_SECONDS").flatMap { Int64($0) }.map { max(1, $0) * 1000 } ?? Lease.defaultDuration
    }
    public static var skewMilliseconds: Int64 { min(Lease.defaultSkew, leaseMilliseconds) }

    init(file: FileLock, lease: Lease?, removeOnRelease: Bool) {
        self.file = file
        renewer = lease.map { LeaseRenewer($0, removeOnRelease: removeOnRelease) }
    }

    deinit { renewer?.release() }

    /// Why the lease was lost (another process took it over after renewals failed for longer
    /// than it lasted), nil while it holds.
    public var lostReason: String? { renewer?.lostReason }
}

/// The thread that keeps a lease: renews it every third of its duration until released.
final class LeaseRenewer: @unchecked Sendable {
    private let lease: Lease
    private let removeOnRelease: Bool
    private let stop = Atomic<Bool>(false)
    private let lost = Mutex<String?>(nil)
    private let wake = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let released = Atomic<Bool>(false)

    init(_ lease: Lease, removeOnRelease: Bool) {
        self.lease = lease
        self.removeOnRelease = removeOnRelease
        let thread = Thread { [self] in run() }
        thread.name = "lease \(lease.key)"
        thread.start()
    }

    var lostReason: String? { lost.withLock { $0 } }

    private func run() {
        defer { finished.signal() }
        let period = Double(HeldLock.leaseMilliseconds) / 3000
        // Woken early only by release.
        while wake.wait(timeout: .now() + period) == .timedOut, !stop.load(ordering: .relaxed) {
            do {
                try lease.renew(duration: HeldLock.leaseMilliseconds)
            } catch let error as StoreError where error.kind == .repositoryLocked {
                lost.withLock { $0 = error.message }
                return
            } catch {
                // A transient failure: the next period tries again; the lease lasts three.
            }
        }
    }

    /// Stops renewing and gives the lease up (removed, or written expired). Idempotent.
    func release() {
        guard !released.exchange(true, ordering: .relaxed) else { return }
        stop.store(true, ordering: .relaxed)
        wake.signal()
        finished.wait()
        guard lostReason == nil else { return }  // the new holder's now
        if removeOnRelease { try? lease.remove() } else { try? lease.release() }
    }
}
