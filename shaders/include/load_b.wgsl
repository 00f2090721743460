// Element i of B in its storage type (B_DTYPE: 0 f32, 1 f16 pairs packed in u32, 2 bf16 pairs
// packed in u32, 3 Q4 blocks, 4 Q8 blocks — frozen weights; unpacking needs no `shader-f16`;
// core/src/dtype.rs). The includer declares `b: array<u32>`.
//#include block_formats
fn load_b(i: u32) -> f32 {
    if (B_DTYPE == 1u) {
        return unpack2x16float(b[i >> 1u])[i & 1u];
    } else if (B_DTYPE == 2u) {
        let word = b[i >> 1u];
        return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
    } else if (B_DTYPE >= 3u) {
        return load_block(i);
    }
    return bitcast<f32>(b[i]);
}
