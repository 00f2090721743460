//! What every op launcher shares: 1-D grids that spill into a second dimension past the
//! workgroup-count limit, and buffer-size checks with messages that name the op and the sizes.

use crate::gpu::{Gpu, GpuBuffer, GpuError, GpuResult};
use crate::shaders::{Def, Variant};

/// Invocations per workgroup of the elementwise and row-wise kernels.
pub const WG_1D: u32 = 64;

/// A 1-D grid of `n` invocations as workgroup counts and the invocation stride of
/// `workgroup_id.y` (kernels compute `i = gid.x + gid.y * stride_y`).
pub fn grid_1d(gpu: &Gpu, op: &str, n: usize, wg: u32) -> GpuResult<([u32; 3], u32)> {
    let limit = gpu.limits().max_compute_workgroups_per_dimension as u64;
    let groups = (n as u64).div_ceil(wg as u64).max(1);
    let gx = groups.min(limit);
    let gy = groups.div_ceil(gx);
    let [x, y, _] = gpu.check_workgroups(op, &format!("{n} invocations"), [gx, gy, 1])?;
    Ok(([x, y, 1], x * wg))
}

/// Fails unless `buf` holds at least `elems` 4-byte elements.
pub fn need(op: &str, what: &str, buf: &GpuBuffer, elems: usize) -> GpuResult<()> {
    if buf.len_bytes() < elems as u64 * 4 {
        return Err(GpuError::shape(op, format!("{what} holds {} elements but needs {elems}", buf.len_bytes() / 4)));
    }
    Ok(())
}

/// The variant of a 1-D kernel with workgroup size `WG_1D` and extra definitions.
pub fn variant_1d(shader: &'static str, entry: &'static str, mut defs: Vec<Def>) -> Variant {
    defs.insert(0, Def::U32("WG", WG_1D));
    Variant { shader, entry, defs }
}
