//! The worker pools of the post-decode work, and prefaulting of the output buffer.
use crate::error::{Result, SmgError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Niceness of the workers of pools with 2+ threads. There the decoder runs FFmpeg frame
/// threads, which wait on each other's rows: a worker that preempts one stalls the other, so
/// the workers should mostly take the CPU time the decoder leaves. 1-thread pools keep the
/// default: there the decoder runs on the calling thread and the worker gets its own core.
const WORKER_NICE: i32 = 10;

/// One pool per thread budget, started on first use and kept.
pub(crate) fn pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&threads) {
        return Ok(p.clone());
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("smg-rs-{i}"))
            .start_handler(move |_| {
                if threads >= 2 {
                    lower_priority(WORKER_NICE)
                }
            })
            .build()
            .map_err(|e| SmgError::InvalidArgument(format!("cannot start {threads} threads: {e}")))?,
    );
    pools.insert(threads, p.clone());
    Ok(p)
}

/// Sets the calling thread's niceness (Linux: per thread). Best effort: a failure changes nothing.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Faults in the pages of `len` bytes at `ptr` (fresh, untouched memory) with
/// MADV_POPULATE_WRITE, 2 MiB per call: on the VM measured, a third cheaper than first-touch
/// faults one page at a time (34 MB: 7 vs 11 ms), and done by a worker while the decoder runs.
/// Best effort: stops at the first failure (kernels before 5.14, other systems: nothing done).
/// The contents are unchanged (zero pages stay zero).
pub(crate) fn prefault(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let (mut at, end) = ((ptr as usize).next_multiple_of(page), (ptr as usize + len) / page * page);
        while at < end {
            let n = (end - at).min(2 << 20);
            // SAFETY: [at, at + n) lies inside the caller's allocation; populating writable
            // pages does not change what they hold.
            if unsafe { libc::madvise(at as *mut libc::c_void, n, MADV_POPULATE_WRITE) } != 0 {
                return;
            }
            at += n;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}
