// The parameters every matrix-product kernel reads (mirrored by `Params` in
// core/src/ops/matmul.rs): C = α·op(A)·op(B) (+ C) (+ bias), strided and batched; all offsets and
// strides in elements.
struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    batch_a: u32,
    batch_b: u32,
    batch_c: u32,
    alpha: f32,
    k_chunk: u32,  // split-K (shaders/matmul_tiled.wgsl): K per split; 0 elsewhere
    splits: u32,   // split-K: splits per product (0 or 1: none)
    products: u32, // split-K reduce: products in the batch
}
