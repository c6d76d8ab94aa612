//! A small bounded cache of output buffers, so that a call whose output has the size of one an
//! earlier call returned gets that buffer back with its pages still mapped: no page faults, no
//! kernel zeroing, no munmap. A 60 s 720p clip's output is 252 MB; faulting it in is ~55 ms of
//! CPU per call and unmapping it ~8 ms, on 2 cores that also run the decoder.
//!
//! Python hands a buffer back when the NumPy array over it (and every view of it) is gone: the
//! array's base object owns the `Vec` and puts it here in its destructor (python.rs), so a buffer
//! in the cache is referenced by nothing. Rust callers get plain `Vec`s that free normally.
//!
//! Bounded by `SMG_RS_BUFFER_CACHE_MB` (read once; default [`DEFAULT_CAP_MB`], 0 disables):
//! the bytes of idle buffers kept; least recently returned ones go first. A buffer is handed out
//! only for a request of its element type at most 1/8 shorter than it (see [`BufferCache::take`]).
//! Reused buffers hold old data: callers must overwrite every element.
use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

/// Default cap of the idle buffers kept, in MB (10^6 bytes): one 60 s 720p output (252 MB) at
/// MiniMax-M3's defaults, with room to spare.
pub const DEFAULT_CAP_MB: u64 = 512;

/// Smaller buffers are not kept: malloc serves them from its heaps without faulting.
pub const MIN_BYTES: usize = 1 << 20;

/// Element types the cache keeps (the output dtypes).
pub trait Cacheable: Sized + Copy + Default + Send + 'static {
    fn wrap(v: Vec<Self>) -> Buffer;
    fn unwrap(b: Buffer) -> std::result::Result<Vec<Self>, Buffer>;
}

/// A cached buffer, by element type.
#[derive(Debug)]
pub enum Buffer {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl Buffer {
    fn bytes(&self) -> usize {
        match self {
            Buffer::F32(v) => v.capacity() * 4,
            Buffer::F16(v) => v.capacity() * 2,
        }
    }
    fn len(&self) -> usize {
        match self {
            Buffer::F32(v) => v.len(),
            Buffer::F16(v) => v.len(),
        }
    }
    fn is_f32(&self) -> bool {
        matches!(self, Buffer::F32(_))
    }
}

impl Cacheable for f32 {
    fn wrap(v: Vec<Self>) -> Buffer {
        Buffer::F32(v)
    }
    fn unwrap(b: Buffer) -> std::result::Result<Vec<Self>, Buffer> {
        match b {
            Buffer::F32(v) => Ok(v),
            other => Err(other),
        }
    }
}

impl Cacheable for half::f16 {
    fn wrap(v: Vec<Self>) -> Buffer {
        Buffer::F16(v)
    }
    fn unwrap(b: Buffer) -> std::result::Result<Vec<Self>, Buffer> {
        match b {
            Buffer::F16(v) => Ok(v),
            other => Err(other),
        }
    }
}

/// The idle buffers (oldest first) and their total bytes, under a cap.
#[derive(Debug)]
pub struct BufferCache {
    cap_bytes: usize,
    inner: Mutex<(VecDeque<Buffer>, usize)>,
}

impl BufferCache {
    pub const fn new(cap_bytes: usize) -> Self {
        BufferCache { cap_bytes, inner: Mutex::new((VecDeque::new(), 0)) }
    }

    /// A buffer of `len` elements: a cached one (contents: old data; `true`) of the same element
    /// type whose length is `len` to `len + len / 8` (truncated to `len`), else a fresh zeroed
    /// one (`false`).
    pub fn take<T: Cacheable>(&self, len: usize) -> (Vec<T>, bool) {
        if self.cap_bytes > 0 && len * std::mem::size_of::<T>() >= MIN_BYTES {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let want_f32 = T::wrap(Vec::new()).is_f32();
            // the closest fit, newest first among equals
            let best = g
                .0
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_f32() == want_f32 && b.len() >= len && b.len() - len <= len / 8)
                .min_by_key(|(i, b)| (b.len(), usize::MAX - i))
                .map(|(i, _)| i);
            if let Some(i) = best {
                let b = g.0.remove(i).expect("index from the same deque");
                g.1 -= b.bytes();
                drop(g);
                let mut v = T::unwrap(b).expect("element type checked");
                v.truncate(len);
                return (v, true);
            }
        }
        (vec![T::default(); len], false)
    }

    /// Keeps `v` for a later [`take`](Self::take) if it fits under the cap once the oldest
    /// buffers are dropped to make room; frees it otherwise. Freeing happens outside the lock.
    pub fn put<T: Cacheable>(&self, v: Vec<T>) {
        self.put_buffer(T::wrap(v))
    }

    /// [`put`](Self::put) of a type-tagged buffer.
    pub fn put_buffer(&self, b: Buffer) {
        let bytes = b.bytes();
        if bytes < MIN_BYTES || bytes > self.cap_bytes {
            return;
        }
        let mut evicted = Vec::new();
        {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            while g.1 + bytes > self.cap_bytes {
                let old = g.0.pop_front().expect("total > 0 means a buffer is kept");
                g.1 -= old.bytes();
                evicted.push(old);
            }
            g.1 += bytes;
            g.0.push_back(b);
        }
        drop(evicted);
    }

    /// The cap in bytes (0: disabled).
    pub fn cap_bytes(&self) -> usize {
        self.cap_bytes
    }

    /// (buffers kept, bytes kept)
    pub fn stats(&self) -> (usize, usize) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.0.len(), g.1)
    }

    /// Frees every kept buffer.
    pub fn clear(&self) {
        let kept = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            g.1 = 0;
            std::mem::take(&mut g.0)
        };
        drop(kept);
    }
}

/// `SMG_RS_BUFFER_CACHE_MB` in bytes (unset or unparsable: the default).
fn cap_from_env() -> usize {
    let mb = std::env::var("SMG_RS_BUFFER_CACHE_MB").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(DEFAULT_CAP_MB);
    mb.saturating_mul(1_000_000).min(usize::MAX as u64) as usize
}

/// The process-wide cache of output buffers.
pub fn global() -> &'static BufferCache {
    static CACHE: OnceLock<BufferCache> = OnceLock::new();
    CACHE.get_or_init(|| BufferCache::new(cap_from_env()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: usize = 1 << 18; // f32 elements of one MiB (MIN_BYTES)

    #[test]
    fn reuses_same_size_and_type_only() {
        let c = BufferCache::new(64 << 20);
        let (mut v, reused) = c.take::<f32>(8 * K);
        assert!(!reused && v.iter().all(|&x| x == 0.0));
        v[0] = 7.0;
        let ptr = v.as_ptr();
        c.put(v);
        assert_eq!(c.stats(), (1, 8 << 20));
        // other type, longer, more than 1/8 shorter: fresh
        assert!(!c.take::<half::f16>(8 * K).1);
        assert!(!c.take::<f32>(8 * K + 1).1);
        assert!(!c.take::<f32>(7 * K - 1).1);
        assert_eq!(c.stats().0, 1);
        // at most 1/8 shorter: the same allocation, old data, truncated
        let (v, reused) = c.take::<f32>(7 * K + K / 5);
        assert!(reused && v.as_ptr() == ptr && v.len() == 7 * K + K / 5 && v[0] == 7.0);
        assert_eq!(c.stats(), (0, 0));
        // small buffers are neither kept nor looked up
        c.put(vec![0f32; K / 2]);
        assert_eq!(c.stats(), (0, 0));
    }

    #[test]
    fn bounded_oldest_first_and_disabled_at_zero() {
        let c = BufferCache::new(3 << 20);
        c.put(vec![0f32; K]); // 1 MiB
        c.put(vec![1f32; K + K / 5]); // 1.2 MiB
        c.put(vec![2f32; K]); // 1 MiB: 3.2 MiB > cap, the oldest goes
        assert_eq!(c.stats(), (2, 4 * (K + K / 5) + 4 * K));
        assert_eq!(c.take::<f32>(K).0[0], 2.0);
        c.put(vec![0f32; 4 * K]); // 4 MiB > cap: not kept, nothing evicted
        assert_eq!(c.stats().0, 1);
        let (v, reused) = c.take::<f32>(K + K / 5);
        assert!(reused && v[0] == 1.0);
        c.clear();
        assert_eq!(c.stats(), (0, 0));

        let off = BufferCache::new(0);
        off.put(vec![0f32; K]);
        assert_eq!(off.stats(), (0, 0));
        assert!(!off.take::<f32>(K).1);
    }

    #[test]
    fn closest_fit_wins() {
        let c = BufferCache::new(64 << 20);
        c.put(vec![1f32; K + K / 10]);
        c.put(vec![2f32; K]);
        c.put(vec![3f32; K + K / 20]);
        assert_eq!(c.take::<f32>(K).0[0], 2.0);
        assert_eq!(c.take::<f32>(K).0[0], 3.0);
    }
}
