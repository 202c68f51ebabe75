import CShim
#if canImport(Glibc)
import Glibc
#endif

/// Where a file's bytes sit on its filesystem (FIEMAP), and what two such maps of reflink
/// clones of one image say changed between them.
public enum FileExtentMap {
    public struct Extent: Sendable, Equatable {
        public var logical: UInt64
        public var physical: UInt64
        public var length: UInt64
        public var flags: UInt32
        public init(logical: UInt64, physical: UInt64, length: UInt64, flags: UInt32) {
            (self.logical, self.physical, self.length, self.flags) = (logical, physical, length, flags)
        }
        public var end: UInt64 { logical + length }
        public var shared: Bool { flags & UInt32(DS_FIEMAP_SHARED) != 0 }
        /// Extents whose physical place says nothing certain about their bytes: not yet
        /// allocated, unknown, compressed or encrypted, packed with others, inline.
        public var placeUncertain: Bool {
            flags & UInt32(DS_FIEMAP_UNKNOWN | DS_FIEMAP_DELALLOC | DS_FIEMAP_ENCODED | DS_FIEMAP_NOT_ALIGNED | DS_FIEMAP_DATA_INLINE | DS_FIEMAP_DATA_TAIL) != 0
        }
        public var unwritten: Bool { flags & UInt32(DS_FIEMAP_UNWRITTEN) != 0 }
    }

    /// Every extent of the open file (synced first), in logical order.
    public static func extents(of descriptor: Int32, path: String) throws(SystemError) -> [Extent] {
        var result: [Extent] = []
        var buffer = [ds_extent](repeating: ds_extent(), count: 4096)
        var start: UInt64 = 0
        while true {
            var count: UInt32 = 0
            var last: Int32 = 0
            let rc = buffer.withUnsafeMutableBufferPointer { ds_fiemap(descriptor, start, UInt64.max - start, $0.baseAddress, UInt32($0.count), &count, &last) }
            guard rc == 0 else { throw SystemError.current("FIEMAP", path) }
            for e in buffer[..<Int(count)] {
                result.append(Extent(logical: e.logical, physical: e.physical, length: e.length, flags: e.flags))
            }
            guard last == 0, count > 0, let tail = result.last else { return result }
            start = tail.end
        }
    }

    /// Bytes in extents no other file shares: what a kept clone holds on its own.
    public static func unsharedBytes(_ extents: [Extent]) -> UInt64 {
        extents.filter { !$0.shared }.reduce(0) { $0 + $1.length }
    }

    /// The byte ranges of `[0, size)` that may differ between two reflink clones of one
    /// image, taken at two instants, by their extent maps. A range is unchanged only where
    /// both clones map it to the very same physical bytes (the same offset between logical
    /// and physical, neither place uncertain, both written or both unwritten), or where
    /// neither maps it (a hole in both). This holds because the older clone keeps its
    /// extents referenced: a write to a shared extent is copied elsewhere (copy on write),
    /// and blocks the older clone holds are never reused for other data.
    public static func changedRanges(old: [Extent], new: [Extent], size: UInt64) -> [ByteRange] {
        var boundaries: [UInt64] = [0, size]
        for e in old + new {
            if e.logical < size { boundaries.append(e.logical) }
            if e.end < size { boundaries.append(e.end) }
        }
        boundaries = Array(Set(boundaries)).sorted()
        var changed: [ByteRange] = []
        var i = 0, j = 0
        for k in 0..<(boundaries.count - 1) {
            let start = boundaries[k], end = boundaries[k + 1]
            guard start < end else { continue }
            while i < old.count, old[i].end <= start { i += 1 }
            while j < new.count, new[j].end <= start { j += 1 }
            let a = i < old.count && old[i].logical <= start ? old[i] : nil
            let b = j < new.count && new[j].logical <= start ? new[j] : nil
            let same: Bool
            switch (a, b) {
            case (nil, nil): same = true
            case (let a?, let b?):
                same = !a.placeUncertain && !b.placeUncertain && a.unwritten == b.unwritten
                    && a.physical &- a.logical == b.physical &- b.logical
            default: same = false
            }
            if same { continue }
            if let lastRange = changed.last, lastRange.end == start {
                changed[changed.count - 1].end = end
            } else {
                changed.append(ByteRange(start: start, end: end))
            }
        }
        return changed
    }
}
