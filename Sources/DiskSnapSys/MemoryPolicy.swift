import CShim
#if canImport(Glibc)
import Glibc
#endif

/// How the process's allocator treats large buffers.
public enum MemoryPolicy {
    /// Buffers of 256 KiB or more are mapped on their own and unmapped when freed. glibc
    /// otherwise raises that threshold each time such a buffer is freed (up to 32 MiB), after
    /// which the blocks, windows and response bodies that worker threads allocate and free
    /// stay in per-thread arenas: a restore from a bucket peaked at 94 MiB with the default
    /// and 79 MiB with this (the same 0.7 s), a local create at the same time and memory.
    public static func mapLargeBuffersAlone() {
        _ = ds_set_mmap_threshold(256 << 10)
    }

    /// A buffer of megabytes that a worker fills again and again (a pack's staging): 2 MiB
    /// aligned and marked for transparent huge pages, where the kernel offers them. Its first
    /// fill then takes one page fault per 2 MiB, not 512: a tracked incremental stages 41 MiB
    /// through 16 MiB of such buffers, whose 4,096 faults were a tenth of its CPU time. Where
    /// no huge page is to be had, it is an ordinary buffer. Free it with `deallocate()`.
    public static func allocateLarge(byteCount: Int) -> UnsafeMutableRawBufferPointer {
        let hugePage = 2 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: byteCount, alignment: hugePage)
        if byteCount >= hugePage {
            _ = madvise(buffer.baseAddress, byteCount / hugePage * hugePage, MADV_HUGEPAGE)
        }
        return buffer
    }
}
