import Testing
import DiskSnapSys

@Suite struct CloneExtentCompareTests {
    typealias E = FileExtentMap.Extent
    let shared: UInt32 = 0x2000
    func e(_ logical: UInt64, _ physical: UInt64, _ length: UInt64, _ flags: UInt32 = 0x2000) -> E {
        E(logical: logical, physical: physical, length: length, flags: flags)
    }
    func r(_ start: UInt64, _ end: UInt64) -> ByteRange { ByteRange(start: start, end: end) }

    @Test func identicalMapsChangeNothing() {
        let map = [e(0, 1000, 4096), e(8192, 50000, 8192)]
        #expect(FileExtentMap.changedRanges(old: map, new: map, size: 16384).isEmpty)
    }

    @Test func aRemappedBlockInsideAnExtentIsExactlyWhatChanged() {
        // The image's block 1 of 4 was copied on write: the new clone maps it elsewhere,
        // around it the same extent, split.
        let old = [e(0, 100_000, 16384)]
        let new = [e(0, 100_000, 4096), e(4096, 900_000, 4096, 0), e(8192, 108_192, 8192)]
        #expect(FileExtentMap.changedRanges(old: old, new: new, size: 16384) == [r(4096, 8192)])
    }

    @Test func holesCountOnlyWhenBothHaveThem() {
        let old = [e(0, 1000, 4096)]
        let new = [e(0, 1000, 4096), e(8192, 7000, 4096)]
        #expect(FileExtentMap.changedRanges(old: old, new: new, size: 16384) == [r(8192, 12288)])
        // Data punched out of the image: a hole in the new clone only.
        #expect(FileExtentMap.changedRanges(old: new, new: old, size: 16384) == [r(8192, 12288)])
    }

    @Test func uncertainPlacesAndUnwrittenStateAreChanges() {
        let old = [e(0, 1000, 4096), e(4096, 2000, 4096), e(8192, 3000, 4096)]
        let delalloc = [e(0, 1000, 4096, 0x4), e(4096, 2000, 4096, 0x8 | 0x2000), e(8192, 3000, 4096, 0x800)]
        #expect(FileExtentMap.changedRanges(old: old, new: delalloc, size: 12288) == [r(0, 12288)])
    }

    @Test func adjacentChangesMergeAndTheEndIsTheSize() {
        let old = [e(0, 1000, 1 << 20)]
        let new = [e(0, 5000, 1 << 20)]
        #expect(FileExtentMap.changedRanges(old: old, new: new, size: 1 << 19) == [r(0, 1 << 19)])
        #expect(FileExtentMap.unsharedBytes([e(0, 1, 10, 0), e(10, 2, 20)]) == 10)
    }
}
