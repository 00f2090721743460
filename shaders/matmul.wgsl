// Batched, strided matrix product: C = alpha · op(A) · op(B) (+ C) (+ bias), in f32.
//   op(A) is M×K: A(m, k) = a[a_off + m·lda + k], or a[a_off + k·lda + m] when TRANS_A
//   op(B) is K×N: B(k, n) = b[b_off + k·ldb + n], or b[b_off + n·ldb + k] when TRANS_B
//   C(m, n)       = c[c_off + m·ldc + n];   workgroup z indexes the batch (strides batch_a/b/c)
// Hugging Face linear layers (W stored [out, in]) are TRANS_B forward, plain backward-to-input,
// and TRANS_A for the weight gradient (see core/src/ops/linear.rs).
//
// Specialisation (prepended by core/src/shaders.rs):
//   TM, TN       rows and columns of C one invocation accumulates in registers
//   WG_M, WG_N   workgroup shape
//   TRANS_A, TRANS_B, HAS_BIAS (bias[n] added), ACCUMULATE (C += instead of C =)
//   B_DTYPE      storage of B: 0 f32, 1 f16 pairs packed in u32, 2 bf16 pairs packed in u32,
//                3 Q4 blocks, 4 Q8 blocks (shaders/include/load_b.wgsl)
//                (frozen weights; unpacking needs no `shader-f16`)
//
// No workgroup memory: every invocation streams its TM rows of A and TN columns of B along K and
// reuses each loaded value TN (resp. TM) times from registers. CPU adapters (llvmpipe) pay dearly
// for barriers and let their caches do the tiling; real GPUs get smaller blocks.

//#include matmul_params

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

//#include load_b

@compute @workgroup_size(WG_N, WG_M, 1)
fn matmul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * TM;
    let col0 = gid.x * TN;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let z = gid.z;
    // Rows and columns past the edge re-read the last valid one (always in bounds) and are
    // discarded at the store: no branches in the inner loop.
    var a_base: array<u32, TM>;
    for (var i = 0u; i < TM; i++) {
        let row = min(row0 + i, p.m - 1u);
        a_base[i] = p.a_off + z * p.batch_a + select(row * p.lda, row, TRANS_A);
    }
    var b_base: array<u32, TN>;
    for (var j = 0u; j < TN; j++) {
        let col = min(col0 + j, p.n - 1u);
        b_base[j] = p.b_off + z * p.batch_b + select(col, col * p.ldb, TRANS_B);
    }
    let a_step = select(1u, p.lda, TRANS_A);
    let b_step = select(p.ldb, 1u, TRANS_B);
    var acc: array<array<f32, TN>, TM>;
    for (var kk = 0u; kk < p.k; kk++) {
        var av: array<f32, TM>;
        for (var i = 0u; i < TM; i++) {
            av[i] = a[a_base[i] + kk * a_step];
        }
        for (var j = 0u; j < TN; j++) {
            let bv = load_b(b_base[j] + kk * b_step);
            for (var i = 0u; i < TM; i++) {
                acc[i][j] = fma(av[i], bv, acc[i][j]);
            }
        }
    }
    for (var i = 0u; i < TM; i++) {
        let row = row0 + i;
        if (row < p.m) {
            for (var j = 0u; j < TN; j++) {
                let col = col0 + j;
                if (col < p.n) {
                    let ci = p.c_off + z * p.batch_c + row * p.ldc + col;
                    var v = p.alpha * acc[i][j];
                    if (HAS_BIAS) {
                        v += bias[col];
                    }
                    if (ACCUMULATE) {
                        v += c[ci];
                    }
                    c[ci] = v;
                }
            }
        }
    }
}
