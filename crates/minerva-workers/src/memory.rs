//! The process's resident memory, read from `/proc/self/statm`.

/// Resident set size of this process in bytes (0 where `/proc` is unavailable).
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

/// Hands memory that the allocator keeps after large frees back to the kernel, so that
/// unloading a model really lowers the process's resident memory (glibc keeps freed
/// blocks below its dynamic mmap threshold in its arenas).
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touching_memory_raises_resident_bytes() {
        let before = resident_bytes();
        // black_box keeps the optimizer from eliding the allocation.
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = resident_bytes();
        assert!(after >= before + (60 << 20), "before {before}, after {after}");
        drop(std::hint::black_box(block));
    }
}
