import Dispatch
import Foundation
import Synchronization
import DiskSnapSys

/// Hands out units of work to worker threads; the first failure stops everyone.
final class WorkQueue: Sendable {
    let count: Int
    private let cursor = Atomic<Int>(0)
    private let failure = Mutex<(any Error)?>(nil)
    private let failed = Atomic<Bool>(false)
    private let closed = Atomic<Bool>(false)

    init(count: Int) { self.count = count }

    /// The next unit, or nil when all are taken, a worker failed or the queue was closed.
    func take() -> Int? {
        if failed.load(ordering: .relaxed) || closed.load(ordering: .relaxed) { return nil }
        let i = cursor.wrappingAdd(1, ordering: .relaxed).oldValue
        return i < count ? i : nil
    }

    /// Hands out nothing more; units already taken are finished by their workers.
    func close() { closed.store(true, ordering: .relaxed) }

    /// How many units were handed out (once every worker has returned: the ones done, as a
    /// prefix `0..<handedOut`, when no worker failed).
    var handedOut: Int { min(cursor.load(ordering: .relaxed), count) }

    func fail(_ error: any Error) {
        failure.withLock { if $0 == nil { $0 = error } }
        failed.store(true, ordering: .relaxed)
    }

    var firstError: (any Error)? { failure.withLock { $0 } }
}

/// Who hears how a long step advances (the CLI draws it on a terminal; the API server keeps
/// it in the snapshot's record, which the engine writes anyway). Called from one thread at a
/// time, every 250 ms or so while the step runs, and once when it ends.
public protocol ProgressObserver: Sendable {
    func update(label: String, done: UInt64, total: UInt64, elapsedSeconds: Double)
    func finished(label: String)
}

/// Bytes done against a total, told to an observer.
final class Progress: Sendable {
    let total: UInt64
    let label: String
    let done = Atomic<UInt64>(0)
    private let start = DispatchTime.now().uptimeNanoseconds
    private let observer: (any ProgressObserver)?

    init(label: String, total: UInt64, observer: (any ProgressObserver)?) {
        self.label = label
        self.total = total
        self.observer = observer
    }

    func add(_ bytes: UInt64) { done.wrappingAdd(bytes, ordering: .relaxed) }

    var elapsedSeconds: Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }

    func render() {
        observer?.update(label: label, done: done.load(ordering: .relaxed), total: total, elapsedSeconds: elapsedSeconds)
    }

    func finish() { observer?.finished(label: label) }
}

/// Runs `body(worker, queue)` on `workers` threads and waits, drawing `progress` meanwhile.
/// Rethrows the first error a worker reported.
func runParallel(workers: Int, queue: WorkQueue, progress: Progress?, tick: () -> Void = {}, _ body: @escaping @Sendable (Int, WorkQueue) throws -> Void) throws {
    // Threads of our own, not Dispatch's pool: libdispatch on Linux caps its width at the
    // core count and does not see a worker blocked in pread/pwrite, so a worker waiting
    // for the disk would hold a core's place instead of letting another one compute.
    let group = DispatchGroup()
    for worker in 0..<workers {
        group.enter()
        let thread = Thread {
            do { try body(worker, queue) } catch { queue.fail(error) }
            group.leave()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
    while group.wait(timeout: .now() + .milliseconds(250)) == .timedOut {
        progress?.render()
        tick()
    }
    progress?.finish()
    if let error = queue.firstError { throw error }
}

/// A value computed on a thread of its own while the caller goes on; `value()` waits for it.
final class Concurrent<Value: Sendable>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<Value, any Error>?  // written before `done` is signalled, read after

    init(_ body: @escaping @Sendable () throws -> Value) {
        let thread = Thread { [self] in
            result = Result { try body() }
            done.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Waits for the value; rethrows what computing it threw. Any thread may ask, any
    /// number of times.
    func value() throws -> Value {
        done.wait()
        done.signal()  // for the next one to ask
        return try result!.get()
    }
}

public enum ByteFormat {
    public static func human(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes), unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
    }
}

/// Worker threads for a pipeline: one per core, bounded.
public enum Workers {
    public static var defaultCount: Int {
        if let text = FileSystem.environment("DISKSNAP_WORKERS"), let n = Int(text), n > 0 { return min(n, 64) }
        return max(1, min(ProcessInfoCores.count, 64))
    }

    /// For a restore, whose workers also wait for the disk (pack reads, `O_DIRECT` writes):
    /// two per core, so that one computes while the other waits. `DISKSNAP_WORKERS` overrides.
    public static var restoreCount: Int {
        if FileSystem.environment("DISKSNAP_WORKERS") != nil { return defaultCount }
        return min(2 * defaultCount, 64)
    }
}
