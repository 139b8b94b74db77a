//! Memory hints for the fast path's big tables: CPU prefetches, so a burst can
//! start loading the table lines of its later packets while earlier ones are
//! processed, and transparent huge pages, so random lookups over hundreds of
//! megabytes do not also miss the TLB on every packet.
#![allow(unsafe_code)]

/// Asks the CPU to start loading the cache line holding `x`. A hint: it never
/// faults, never changes memory, and does nothing on other architectures.
#[inline(always)]
pub fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of the x86_64 baseline, so the instruction
        // exists; PREFETCHT0 reads nothing architecturally and cannot fault,
        // and the pointer comes from a live reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast::<i8>()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Huge pages are 2 MiB on x86_64 and (usually) aarch64.
const HUGE: usize = 2 << 20;

/// A vector of `n` copies of `value` whose memory the kernel is asked to back
/// with transparent huge pages (`madvise(MADV_HUGEPAGE)`) before it is first
/// written, for tables of megabytes that are read at random. Without THP the
/// advice is refused and the vector is an ordinary one.
pub fn huge_vec<T: Clone>(value: T, n: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    let bytes = n * std::mem::size_of::<T>();
    if bytes >= HUGE {
        advise_huge(v.as_mut_ptr().cast::<u8>(), bytes);
    }
    v.resize(n, value);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge(start: *mut u8, len: usize) {
    // Only whole huge pages inside the allocation are advised.
    let first = (start as usize).next_multiple_of(HUGE);
    let end = (start as usize + len) & !(HUGE - 1);
    if end > first {
        // SAFETY: [first, end) lies inside the vector's own allocation, which
        // nothing else references yet; MADV_HUGEPAGE changes how the kernel
        // backs those pages, never their contents. A failure (no THP) is fine.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_start: *mut u8, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_vec_is_an_ordinary_vector() {
        let v = huge_vec(7u32, 3 << 20);
        assert_eq!(v.len(), 3 << 20);
        assert!(v.iter().all(|x| *x == 7));
        let small = huge_vec(1u8, 10);
        assert_eq!(small, vec![1u8; 10]);
        prefetch(&v[12345]);
    }
}
