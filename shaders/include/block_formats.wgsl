// The block formats of frozen weights (B_DTYPE 3: Q4, 4: Q8; core/src/dtype.rs describes them and
// unpacks them on the CPU the same way). A block is six words: scale and offset (f32 bits), then
// the codes, lowest bits first — Q4: 32 four-bit codes 0..15, eight to a word; Q8: 16 signed
// bytes, four to a word. Element value = scale·q + offset (scale·q is exact for every block convrec
// makes, so fusing the multiply-add changes nothing). The includer declares `b: array<u32>`.

// Elements per block.
fn block_len() -> u32 {
    return select(16u, 32u, B_DTYPE == 3u);
}

fn block_scale(block: u32) -> f32 {
    return bitcast<f32>(b[block * 6u]);
}

fn block_offset(block: u32) -> f32 {
    return bitcast<f32>(b[block * 6u + 1u]);
}

// Code j of a block, not yet scaled.
fn block_code(block: u32, j: u32) -> f32 {
    if (B_DTYPE == 3u) {
        return f32((b[block * 6u + 2u + (j >> 3u)] >> ((j & 7u) * 4u)) & 15u);
    }
    // The byte to the top, then an arithmetic shift back: the sign-extended code (no
    // `extractBits`, which older Metal Shading Language versions lack).
    return f32(bitcast<i32>(b[block * 6u + 2u + (j >> 2u)] << (24u - (j & 3u) * 8u)) >> 24u);
}

// Codes 4·j4 … 4·j4 + 3 of a block (one code word), not yet scaled.
fn block_codes4(block: u32, j4: u32) -> vec4<f32> {
    if (B_DTYPE == 3u) {
        let w = b[block * 6u + 2u + (j4 >> 1u)] >> ((j4 & 1u) * 16u);
        return vec4<f32>(vec4<u32>(w, w >> 4u, w >> 8u, w >> 12u) & vec4<u32>(15u));
    }
    let w = bitcast<i32>(b[block * 6u + 2u + j4]);
    return vec4<f32>(vec4<i32>(w << 24u, w << 16u, w << 8u, w) >> vec4<u32>(24u));
}

// Element i.
fn load_block(i: u32) -> f32 {
    let block = i / block_len();
    return block_scale(block) * block_code(block, i % block_len()) + block_offset(block);
}

// Four consecutive elements from e, a multiple of 4 (they share a block and a code word).
fn load_block4(e: u32) -> vec4<f32> {
    let block = e / block_len();
    return block_scale(block) * block_codes4(block, (e % block_len()) >> 2u) + block_offset(block);
}
