// Tensor-core matrix product (cooperative matrices): same product, parameters and first five
// bindings as shaders/matmul.wgsl (C = α·op(A)·op(B) (+ C) (+ bias), strided, batched, any
// alignment, B in f32, f16 or bf16), computed with f16 operands and f32 accumulation.
//
// A workgroup of SG_M×SG_N subgroups owns a BM×BN block of C; each subgroup owns FM×FN tiles of
// T×T, kept in cooperative-matrix accumulators for the whole K walk. Per K step of BK the whole
// workgroup converts the A and B panels to f16 into workgroup memory (elements past M, N or K are
// zeros, so ragged edges need no special tiles), then every subgroup multiplies its tiles from
// there. At the end each tile goes through a small f32 scratch in workgroup memory so that α, the
// bias, the accumulation into C and the bounds checks stay element-wise and exact.
//
// f16 holds magnitudes up to 65504: an operand beyond that would silently become ±inf, so the
// conversion records it in `overflow` (the host reads the flag and stops with a clear message).
//
// Specialisation: T (tile side, 8 or 16: what the adapter's cooperative matrices offer),
// SG_M, SG_N (subgroups per workgroup), FM, FN (tiles per subgroup), SG_SIZE (the adapter's
// subgroup size), BK (K step, a multiple of T), TRANS_A, TRANS_B, HAS_BIAS, ACCUMULATE, B_DTYPE.

enable f16;
enable wgpu_cooperative_matrix;

//#include matmul_params

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read_write> overflow: array<atomic<u32>>;

//#if T == 8
alias TileA = coop_mat8x8<f16, A>;
alias TileB = coop_mat8x8<f16, B>;
alias TileC = coop_mat8x8<f32, C>;
//#else
alias TileA = coop_mat16x16<f16, A>;
alias TileB = coop_mat16x16<f16, B>;
alias TileC = coop_mat16x16<f32, C>;
//#endif

const BM: u32 = SG_M * FM * T;
const BN: u32 = SG_N * FN * T;
const THREADS: u32 = SG_M * SG_N * SG_SIZE;
const F16_MAX: f32 = 65504.0;

var<workgroup> panel_a: array<f16, BM * BK>; // row-major [row][kk]
var<workgroup> panel_b: array<f16, BK * BN>; // row-major [kk][col]
var<workgroup> scratch: array<f32, SG_M * SG_N * T * T>; // one T×T tile per subgroup

//#include load_b

/// The f16 operand for `v`, flagging values f16 cannot hold (NaN passes through: the loss
/// checks catch it with their own message).
fn to_f16(v: f32) -> f16 {
    if (abs(v) > F16_MAX) {
        atomicStore(&overflow[0], 1u);
    }
    return f16(clamp(v, -F16_MAX, F16_MAX));
}

@compute @workgroup_size(THREADS, 1, 1)
fn matmul_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let z = wid.z;
    let row_base = wid.y * BM;
    let col_base = wid.x * BN;
    let a_base = p.a_off + z * p.batch_a;
    let b_base = p.b_off + z * p.batch_b;
    // This subgroup's tiles: rows sg_row·FM·T …, columns sg_col·FN·T … of the block.
    let sg_row = (sg / SG_N) * FM * T;
    let sg_col = (sg % SG_N) * FN * T;
    //#for i in FM
    //#for j in FN
    var acc${i}_${j} = TileC();
    //#end
    //#end
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Copy the panels, reading along each operand's contiguous dimension.
        for (var e = li; e < BM * BK; e += THREADS) {
            var r: u32;
            var kk: u32;
            if (TRANS_A) {
                kk = e / BM;
                r = e % BM;
            } else {
                r = e / BK;
                kk = e % BK;
            }
            let row = row_base + r;
            let k = k0 + kk;
            var v = 0.0;
            if (row < p.m && k < p.k) {
                v = a[a_base + select(row * p.lda + k, k * p.lda + row, TRANS_A)];
            }
            panel_a[r * BK + kk] = to_f16(v);
        }
        for (var e = li; e < BN * BK; e += THREADS) {
            var col: u32;
            var kk: u32;
            if (TRANS_B) {
                col = e / BK;
                kk = e % BK;
            } else {
                kk = e / BN;
                col = e % BN;
            }
            let n = col_base + col;
            let k = k0 + kk;
            var v = 0.0;
            if (n < p.n && k < p.k) {
                v = load_b(b_base + select(k * p.ldb + n, n * p.ldb + k, TRANS_B));
            }
            panel_b[kk * BN + col] = to_f16(v);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += T) {
            //#for i in FM
            let x${i} = coopLoadT<TileA>(&panel_a[(sg_row + ${i}u * T) * BK + kk], BK);
            //#end
            //#for j in FN
            let y${j} = coopLoadT<TileB>(&panel_b[kk * BN + sg_col + ${j}u * T], BN);
            //#end
            //#for i in FM
            //#for j in FN
            acc${i}_${j} = coopMultiplyAdd(x${i}, y${j}, acc${i}_${j});
            //#end
            //#end
        }
        workgroupBarrier();
    }
    // Epilogue, one tile at a time through this subgroup's scratch tile.
    let tile = sg * T * T;
    //#for i in FM
    //#for j in FN
    coopStoreT(acc${i}_${j}, &scratch[tile], T);
    workgroupBarrier();
    for (var e = lane; e < T * T; e += sg_size) {
        let row = row_base + sg_row + ${i}u * T + e / T;
        let col = col_base + sg_col + ${j}u * T + e % T;
        if (row < p.m && col < p.n) {
            let ci = p.c_off + z * p.batch_c + row * p.ldc + col;
            var v = p.alpha * scratch[tile + e];
            if (HAS_BIAS) {
                v += bias[col];
            }
            if (ACCUMULATE) {
                v += c[ci];
            }
            c[ci] = v;
        }
    }
    workgroupBarrier();
    //#end
    //#end
}
