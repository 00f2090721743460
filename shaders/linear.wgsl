// Linear layer as Hugging Face stores it: y[M,N] = x[M,K] · W[N,K]ᵀ (+ b[N]).
//
// Specialisation (prepended by core/src/shaders.rs):
//   TM, TN     rows of y and columns of y each invocation accumulates in registers
//   WG_M, WG_N workgroup shape (invocations along rows and columns)
//   HAS_BIAS   whether binding 3 holds a bias to add
//
// No workgroup memory: both operands are contiguous along K, so each invocation streams TM rows
// of x and TN rows of W and reuses every loaded value TN (resp. TM) times from registers. On CPU
// adapters (llvmpipe) barriers are expensive and the CPU caches do the tiling; discrete GPUs get
// the same kernel with a smaller register block.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG_N, WG_M, 1)
fn linear_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * TM;
    let col0 = gid.x * TN;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    // Rows and columns past the edge re-read the last valid one (always in bounds) and are
    // discarded at the store: no branches in the inner loop.
    var x_base: array<u32, TM>;
    for (var i = 0u; i < TM; i++) {
        x_base[i] = min(row0 + i, p.m - 1u) * p.k;
    }
    var w_base: array<u32, TN>;
    for (var j = 0u; j < TN; j++) {
        w_base[j] = min(col0 + j, p.n - 1u) * p.k;
    }
    var acc: array<array<f32, TN>, TM>;
    for (var kk = 0u; kk < p.k; kk++) {
        var xv: array<f32, TM>;
        for (var i = 0u; i < TM; i++) {
            xv[i] = x[x_base[i] + kk];
        }
        for (var j = 0u; j < TN; j++) {
            let wv = w[w_base[j] + kk];
            for (var i = 0u; i < TM; i++) {
                acc[i][j] = fma(xv[i], wv, acc[i][j]);
            }
        }
    }
    for (var i = 0u; i < TM; i++) {
        let row = row0 + i;
        if (row < p.m) {
            for (var j = 0u; j < TN; j++) {
                let col = col0 + j;
                if (col < p.n) {
                    var v = acc[i][j];
                    if (HAS_BIAS) {
                        v += bias[col];
                    }
                    y[row * p.n + col] = v;
                }
            }
        }
    }
}
