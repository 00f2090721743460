//! GPU buffers and the pool that recycles them. Training and sampling allocate the same shapes
//! every step; a pool keyed by size class and usage turns those allocations into free-list pops,
//! and keeps buffer identities stable so cached bind groups stay valid.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

static NEXT_BUFFER_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_buffer_id() -> u64 {
    NEXT_BUFFER_ID.fetch_add(1, Ordering::Relaxed)
}

/// A buffer from the pool. Clones share it; when the last clone drops, it returns to the pool.
#[derive(Clone, Debug)]
pub struct GpuBuffer {
    slot: Arc<Slot>,
    /// Bytes in use (the pool may have handed out a larger allocation).
    len: u64,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    buffer: wgpu::Buffer,
    capacity: u64,
    usage: wgpu::BufferUsages,
    pool: Weak<Mutex<FreeLists>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            if let Ok(mut free) = pool.lock() {
                free.put(self.capacity, self.usage, self.id, self.buffer.clone());
            }
        }
    }
}

impl GpuBuffer {
    /// Stable identity, used to key bind-group caches.
    pub fn id(&self) -> u64 {
        self.slot.id
    }
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.slot.buffer
    }
    /// Bytes in use.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }
    pub fn capacity(&self) -> u64 {
        self.slot.capacity
    }
    pub fn usage(&self) -> wgpu::BufferUsages {
        self.slot.usage
    }
    /// The binding size: bytes in use rounded up to the 4-byte granularity bindings require.
    pub fn binding_size(&self) -> u64 {
        self.len.div_ceil(4).max(1) * 4
    }
}

#[derive(Default, Debug)]
pub(crate) struct FreeLists {
    lists: HashMap<(u64, u32), Vec<(u64, wgpu::Buffer)>>,
    bytes: u64,
    /// Bytes of every buffer the pool has created and not destroyed (in use or free), and the
    /// most that ever was: the GPU memory this process holds through the pool.
    device_bytes: u64,
    peak_device_bytes: u64,
}

impl FreeLists {
    fn put(&mut self, capacity: u64, usage: wgpu::BufferUsages, id: u64, buffer: wgpu::Buffer) {
        self.bytes += capacity;
        self.lists.entry((capacity, usage.bits())).or_default().push((id, buffer));
    }
    fn take(&mut self, capacity: u64, usage: wgpu::BufferUsages) -> Option<(u64, wgpu::Buffer)> {
        let found = self.lists.get_mut(&(capacity, usage.bits()))?.pop()?;
        self.bytes -= capacity;
        Some(found)
    }
}

/// Recycles buffers by (size class, usage).
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Arc<Mutex<FreeLists>>,
}

/// Rounds a request up to its size class: powers of two up to 4 KiB, then eight classes per
/// power of two, so a recycled buffer wastes at most 12.5%.
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(16);
    if bytes <= 4096 {
        return bytes.next_power_of_two();
    }
    let pow = 63 - bytes.leading_zeros() as u64; // floor(log2)
    let step = 1u64 << (pow - 3);
    bytes.div_ceil(step) * step
}

impl BufferPool {
    /// A buffer of at least `bytes` bytes with `usage`, recycled when one is free.
    pub(crate) fn acquire(
        &self,
        device: &wgpu::Device,
        bytes: u64,
        usage: wgpu::BufferUsages,
        label: &str,
    ) -> GpuBuffer {
        let capacity = size_class(bytes);
        let recycled = self.free.lock().ok().and_then(|mut f| f.take(capacity, usage));
        let (id, buffer) = recycled.unwrap_or_else(|| {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: capacity,
                usage,
                mapped_at_creation: false,
            });
            if let Ok(mut f) = self.free.lock() {
                f.device_bytes += capacity;
                f.peak_device_bytes = f.peak_device_bytes.max(f.device_bytes);
            }
            (next_buffer_id(), buffer)
        });
        GpuBuffer { slot: Arc::new(Slot { id, buffer, capacity, usage, pool: Arc::downgrade(&self.free) }), len: bytes }
    }

    /// Bytes held by free buffers.
    pub fn cached_bytes(&self) -> u64 {
        self.free.lock().map(|f| f.bytes).unwrap_or(0)
    }

    /// Bytes of GPU memory held through the pool now (buffers in use and free ones), and the
    /// peak since the last `reset_peak`.
    pub fn device_bytes(&self) -> (u64, u64) {
        self.free.lock().map(|f| (f.device_bytes, f.peak_device_bytes)).unwrap_or((0, 0))
    }

    /// Starts a new peak from what is held now (benchmarks measure one phase at a time).
    pub fn reset_peak(&self) {
        if let Ok(mut f) = self.free.lock() {
            f.peak_device_bytes = f.device_bytes;
        }
    }

    /// Releases every free buffer to the driver.
    pub fn trim(&self) {
        if let Ok(mut f) = self.free.lock() {
            let freed = f.bytes;
            for (_, list) in f.lists.drain() {
                for (_, buffer) in list {
                    buffer.destroy();
                }
            }
            f.bytes = 0;
            f.device_bytes -= freed.min(f.device_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn the_pool_counts_the_memory_it_holds_and_its_peak() {
        // A device of its own: the shared test device's pool moves with the other tests.
        if crate::testing::gpu().is_none() {
            return;
        }
        let gpu = pollster::block_on(crate::gpu::Gpu::new(&crate::gpu::GpuOptions::default())).unwrap();
        let pool = gpu.pool();
        pool.trim();
        pool.reset_peak();
        let (start, _) = pool.device_bytes();
        // Sizes no other test uses, so no free buffer of their class exists.
        let a = gpu.storage("t", "a", 3_000_003).unwrap();
        let b = gpu.storage("t", "b", 5_000_011).unwrap();
        let held = a.capacity() + b.capacity();
        assert!(pool.device_bytes().0 >= start + held);
        drop(a);
        drop(b);
        // Freed buffers stay in the pool (still held) until trimmed; the peak remembers them.
        let (now, peak) = pool.device_bytes();
        assert!(now >= start + held && peak >= start + held);
        pool.trim();
        assert!(pool.device_bytes().0 + held <= now);
    }

    #[test]
    fn size_classes_cover_the_request_and_waste_little() {
        for bytes in [1u64, 15, 16, 17, 255, 4096, 4097, 5000, 65_537, 1 << 30, (1 << 30) + 1, 589_824_000] {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            if bytes > 4096 {
                assert!((c - bytes) as f64 <= bytes as f64 * 0.125, "{bytes} -> {c} wastes too much");
            }
            assert_eq!(c % 4, 0, "size classes keep 4-byte copy alignment");
        }
        assert_eq!(size_class(4097), 4608);
    }
}
