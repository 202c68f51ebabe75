import Synchronization
import DiskSnapSys
import DiskSnapFormat

/// Index entries gathered by one process (a writer's new chunks, repair's rebuilt index) in
/// bounded memory: at most `spillEntries` wait in memory; then they are sorted and written as a
/// version 3 segment (a run) in the work area. Runs of one size class (x8 apart) are merged
/// into one when `runsPerTier` of them exist, so a lookup probes a few runs whatever the count;
/// `merge` combines everything into one segment. A Bloom filter of every spilled digest answers
/// "absent" without reading a run. Thread-safe.
public final class SpilledRuns: Sendable {
    /// Entries waiting in memory before a spill (2 MiB; one pack more may join before it).
    public static let spillEntries = 1 << 15
    static let runsPerTier = 8
    /// The filter is sized for at most this many (past it, more false positives: a run page
    /// read, never a wrong answer).
    static let maximumFilterEntries = 1 << 24

    private struct State: Sendable {
        var runs: [SortedSegment] = []
        var filter: DigestFilter
        var pending: [ChunkIndexFormat.Entry] = []
        var pendingPacks: [PackID] = []
        var runNumber = 0
    }

    private let area: TemporaryArea
    private let state: Mutex<State>
    /// Held while a run is written or merged (one at a time); `state` only for moments.
    private let writing = Mutex(())

    public init(area: TemporaryArea, expectedEntries: UInt64) {
        self.area = area
        state = Mutex(State(filter: DigestFilter(expected: Int(min(expectedEntries, UInt64(Self.maximumFilterEntries))))))
    }

    /// True when a spilled run holds `digest` (entries still waiting in memory are not seen:
    /// the writer's claim set covers them).
    public func contains(_ digest: ChunkDigest) throws -> Bool {
        let runs: [SortedSegment]? = state.withLock { $0.filter.mayContain(digest) ? $0.runs : nil }
        guard let runs else { return false }
        for run in runs where try run.mayContain(digest) {
            if try !run.copies(of: digest).isEmpty { return true }
        }
        return false
    }

    /// Adds one pack's entries; when enough wait, spills them and calls `spilled` with the
    /// spilled entries once their run is visible to `contains`.
    public func add(pack: PackID, entries: [PackEntry], spilled: ([ChunkIndexFormat.Entry]) -> Void = { _ in }) throws {
        let full = state.withLock { state -> Bool in
            // Reserved once per spill: growing by doubling would hold the old and new buffers.
            if state.pending.isEmpty { state.pending.reserveCapacity(Self.spillEntries + PackFormat.maximumEntriesPerPack) }
            let ordinal = UInt32(state.pendingPacks.count)
            state.pendingPacks.append(pack)
            for e in entries {
                state.pending.append(.init(digest: e.digest, pack: ordinal, offset: e.offset, storedLength: e.storedLength,
                                           rawLength: e.rawLength, encoding: e.encoding, blockOffset: e.blockOffset))
            }
            return state.pending.count >= Self.spillEntries
        }
        if full { try spill(spilled) }
    }

    private func nextPath() -> String {
        let number = state.withLock { state -> Int in
            defer { state.runNumber += 1 }
            return state.runNumber
        }
        return area.path("run-\(number).idx")
    }

    /// Writes the waiting entries as one sorted run (sorted in place: the only copy in memory).
    private func spill(_ spilled: ([ChunkIndexFormat.Entry]) -> Void) throws {
        try writing.withLock { _ in
            var (entries, packs) = state.withLock { state in
                defer {
                    state.pending = []
                    state.pendingPacks = []
                }
                return (state.pending, state.pendingPacks)
            }
            guard !entries.isEmpty else { return }
            entries.sort { $0.digest < $1.digest }
            let path = nextPath()
            let writer = try SortedSegmentWriter(path: path, packs: packs, entryCount: UInt64(entries.count), sync: false)
            for e in entries { try writer.append(e) }
            try writer.finish()
            let run = try SortedSegment(path: path)
            state.withLock { state in
                state.runs.append(run)
                for e in entries { state.filter.insert(e.digest) }
            }
            spilled(entries)
            try mergeFullTier()
        }
    }

    private static func tier(_ entries: UInt64) -> Int {
        var t = 0, limit = UInt64(spillEntries) * 8
        while entries >= limit && t < 20 {
            t += 1
            limit *= 8
        }
        return t
    }

    /// Merges the runs of a size class that has `runsPerTier` (the inputs stay visible until
    /// the merged run replaces them; an open run stays readable after its file is removed).
    private func mergeFullTier() throws {
        while true {
            let runs = state.withLock { $0.runs }
            let byTier = Dictionary(grouping: runs, by: { Self.tier($0.entryCount) })
            guard let members = byTier.values.first(where: { $0.count >= Self.runsPerTier }) else { return }
            let path = nextPath()
            _ = try SegmentMerge.merge(members, to: path, sync: false)
            let merged = try SortedSegment(path: path)
            let gone = Set(members.map(\.path))
            state.withLock { state in state.runs = state.runs.filter { !gone.contains($0.path) } + [merged] }
            for path in gone { try? FileSystem.removeIfExists(path) }
        }
    }

    /// Spills what waits and merges every run into one fsynced segment at `path`; with
    /// `unique`, one entry per digest (the first added).
    public func merge(to path: String, unique: Bool = false) throws -> SegmentMerge.Result {
        try spill { _ in }
        let runs = state.withLock { $0.runs }
        return try SegmentMerge.merge(runs, to: path, unique: unique)
    }
}
