// Workgroup-tiled matrix product for real GPUs: same product, parameters and bindings as
// shaders/matmul.wgsl (C = α·op(A)·op(B) (+ C) (+ bias), strided, batched; any alignment).
//
// Each workgroup of WG_M×WG_N invocations owns a (WG_M·TM)×(WG_N·TN) block of C. It walks K in
// steps of BK: the whole workgroup copies the A and B panels of the step into workgroup memory
// (each panel read once from global memory, along its contiguous dimension so neighbouring
// invocations read neighbouring addresses), then every invocation accumulates its TM×TN outputs
// from the panels. An invocation's rows are ly, ly+WG_M, … and its columns lx, lx+WG_N, … so that
// neighbouring invocations read neighbouring panel words and store neighbouring C columns.
// CPU adapters do not get this kernel: llvmpipe pays heavily for barriers (bench/RESULTS.md).
//
// Split-K (`splits` > 1, for long-K products whose output has too few blocks to fill the GPU):
// workgroup z of the grid takes product z / splits and the K range of split z % splits
// (`k_chunk` long), and stores its partial sum into slice z of C — the caller binds a scratch
// buffer there and prepares this pass without bias or accumulation; `matmul_splitk_reduce` then
// adds the slices up into the real C with α, the bias and the accumulation.
//
// Specialisation: TM, TN, WG_M, WG_N, BK, TRANS_A, TRANS_B, HAS_BIAS, ACCUMULATE,
// B_DTYPE (0 f32, 1 f16, 2 bf16 pairs packed in u32, 3 Q4, 4 Q8 blocks).

//#include matmul_params

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const BM: u32 = WG_M * TM;
const BN: u32 = WG_N * TN;
const THREADS: u32 = WG_M * WG_N;
// Panel rows are padded by one word: the copy writes a K-major panel with a stride of BM (or BN)
// words between neighbouring invocations, which would otherwise all hit one memory bank.
const SA: u32 = BM + 1u;
const SB: u32 = BN + 1u;

var<workgroup> panel_a: array<f32, BK * SA>; // [kk][row]
var<workgroup> panel_b: array<f32, BK * SB>; // [kk][col]

//#include load_b

fn store(row: u32, col: u32, z: u32, value: f32) {
    if (row < p.m && col < p.n) {
        let ci = p.c_off + z * p.batch_c + row * p.ldc + col;
        var v = p.alpha * value;
        if (HAS_BIAS) {
            v += bias[col];
        }
        if (ACCUMULATE) {
            v += c[ci];
        }
        c[ci] = v;
    }
}

@compute @workgroup_size(WG_N, WG_M, 1)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let splits = max(p.splits, 1u);
    let z = wid.z / splits;
    let row_base = wid.y * BM;
    let col_base = wid.x * BN;
    let a_base = p.a_off + z * p.batch_a;
    let b_base = p.b_off + z * p.batch_b;
    // This workgroup's K range (all of K without split-K).
    let k_begin = select(0u, (wid.z % splits) * p.k_chunk, splits > 1u);
    let k_end = select(p.k, min(p.k, k_begin + p.k_chunk), splits > 1u);
    //#for i in TM
    //#for j in TN
    var acc${i}_${j} = 0.0;
    //#end
    //#end
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        // Copy the panels; elements past M, N or K are zeros.
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
            if (row < p.m && k < k_end) {
                v = a[a_base + select(row * p.lda + k, k * p.lda + row, TRANS_A)];
            }
            panel_a[kk * SA + r] = v;
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
            if (n < p.n && k < k_end) {
                v = load_b(b_base + select(k * p.ldb + n, n * p.ldb + k, TRANS_B));
            }
            panel_b[kk * SB + col] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            //#for i in TM
            let x${i} = panel_a[kk * SA + lid.y + ${i}u * WG_M];
            //#end
            //#for j in TN
            let y${j} = panel_b[kk * SB + lid.x + ${j}u * WG_N];
            //#end
            //#for i in TM
            //#for j in TN
            acc${i}_${j} = fma(x${i}, y${j}, acc${i}_${j});
            //#end
            //#end
        }
        workgroupBarrier();
    }
    //#for i in TM
    //#for j in TN
    store(row_base + lid.y + ${i}u * WG_M, col_base + lid.x + ${j}u * WG_N, wid.z, acc${i}_${j});
    //#end
    //#end
}

// Split-K's second pass: C[z, row, col] = α·Σ_s partial[z·splits + s, row, col] (+ bias) (+ C),
// one invocation per element of C. The partial slices (binding 1, in place of A) are dense
// m×n; C is addressed as in the product.
@compute @workgroup_size(64, 1, 1)
fn matmul_splitk_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let per_product = p.m * p.n;
    if (i >= per_product * p.products) {
        return;
    }
    let z = i / per_product;
    let row = (i % per_product) / p.n;
    let col = i % p.n;
    var sum = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        sum += a[(z * p.splits + s) * per_product + row * p.n + col];
    }
    store(row, col, z, sum);
}
