// The block formats of frozen weights (B_DTYPE 3: Q4, 4: Q8; core/src/dtype.rs describes them and
// unpacks them on the CPU the same way). A block is six words: scale and offset (f32 bits), then
// the codes, lowest bits first — Q4: 32 four-bit codes 0..15, eight to a word; Q8: 16 signed
// bytes, four to a word. Element value = scale·q + offset (scale·q is exact for every block convrec
// makes, so fusing the multiply-add changes nothing). The includer declares `b: array<u32>`.

fn load_q4(i: u32) -> f32 {
    let base = (i >> 5u) * 6u;
    let j = i & 31u;
    let q = (b[base + 2u + (j >> 3u)] >> ((j & 7u) * 4u)) & 15u;
    return bitcast<f32>(b[base]) * f32(q) + bitcast<f32>(b[base + 1u]);
}

fn load_q8(i: u32) -> f32 {
    let base = (i >> 4u) * 6u;
    let j = i & 15u;
    // The byte to the top, then an arithmetic shift back: the sign-extended code (no
    // `extractBits`, which older Metal Shading Language versions lack).
    let q = bitcast<i32>(b[base + 2u + (j >> 2u)] << (24u - (j & 3u) * 8u)) >> 24u;
    return bitcast<f32>(b[base]) * f32(q) + bitcast<f32>(b[base + 1u]);
}

// Four consecutive elements from e, a multiple of 4 (they share a block and a code word).
fn load_q4x4(e: u32) -> vec4<f32> {
    let base = (e >> 5u) * 6u;
    let j = e & 31u;
    let w = b[base + 2u + (j >> 3u)] >> ((j & 7u) * 4u);
    let q = vec4<u32>(w, w >> 4u, w >> 8u, w >> 12u) & vec4<u32>(15u);
    return bitcast<f32>(b[base]) * vec4<f32>(q) + bitcast<f32>(b[base + 1u]);
}

fn load_q8x4(e: u32) -> vec4<f32> {
    let base = (e >> 4u) * 6u;
    let w = bitcast<i32>(b[base + 2u + ((e & 15u) >> 2u)]);
    // Each byte to the top, then an arithmetic shift back: sign-extended codes.
    let q = vec4<i32>(w << 24u, w << 16u, w << 8u, w) >> vec4<u32>(24u);
    return bitcast<f32>(b[base]) * vec4<f32>(q) + bitcast<f32>(b[base + 1u]);
}

// Whole-block access for kernels that factor the scale and offset out of a block's dot product:
// block number `block`'s scale, offset, and the codes of its quad j as f32 (not yet scaled).
fn block_scale(block: u32) -> f32 {
    return bitcast<f32>(b[block * 6u]);
}

fn block_offset(block: u32) -> f32 {
    return bitcast<f32>(b[block * 6u + 1u]);
}

fn block_codes4(block: u32, j: u32) -> vec4<f32> {
    if (B_DTYPE == 3u) {
        let w = b[block * 6u + 2u + (j >> 1u)] >> ((j & 1u) * 16u);
        return vec4<f32>(vec4<u32>(w, w >> 4u, w >> 8u, w >> 12u) & vec4<u32>(15u));
    }
    let w = bitcast<i32>(b[block * 6u + 2u + j]);
    return vec4<f32>(vec4<i32>(w << 24u, w << 16u, w << 8u, w) >> vec4<u32>(24u));
}
