//! The process's allocator: mimalloc, set to keep freed memory mapped.
//!
//! burn's CPU backend allocates and frees large buffers every op, and once a data set is
//! resident (e.g. Speech Commands audio for augmentation) glibc's heap makes the DS-CNN-L
//! training step ~25% slower; mimalloc does not (BENCHMARKS.md).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_e` in mimalloc 2 and 3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory mapped instead of returning it to the OS 10 ms after a free (mimalloc's
/// default). A training step frees and reallocates activation-sized buffers (megabytes) every
/// op; with purging, each reallocation page-faults and the kernel zeroes the pages again
/// (`docs/DESIGN.md`, "Allocator purging"). The process keeps its peak heap instead.
/// (`MIMALLOC_PURGE_DELAY` in the environment is read before `main` and is overridden here.)
pub fn keep_freed_memory() {
    // SAFETY: sets an allocator option (the index is checked against mimalloc.h of the bundled
    // libmimalloc-sys 0.1.49, v2 and v3); no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
