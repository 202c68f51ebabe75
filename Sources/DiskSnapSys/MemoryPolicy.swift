import CShim

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
}
