// Fast paths of shaders/matmul.wgsl for aligned operands (K, N, leading dimensions, offsets and
// batch strides multiples of 4): vec4 loads and register blocks held in named variables — never
// in arrays indexed by loop counters, which CPU adapters (llvmpipe) spill to memory (measured
// 3–7× slower). The `//#for` lines are unrolled by core/src/shaders.rs before compilation.
// Same parameters and bindings as matmul.wgsl; all offsets and strides are in elements.
//
//   matmul_nt: C = α·A·Bᵀ + …   A [M,K], B [N,K] row-major    (linear forward, logits)
//   matmul_nn: C = α·A·B + …    A [M,K], B [K,N]               (backward to the input)
//   matmul_tn: C = α·Aᵀ·B + …   A [K,M], B [K,N]               (weight gradients)
//
// Specialisation: TM, TN (register block; TN a multiple of 4, TM a multiple of 4 for matmul_tn),
// WG_M, WG_N, HAS_BIAS, ACCUMULATE, B_DTYPE (0 f32, 1 f16, 2 bf16, 3 Q4, 4 Q8; matmul_nt and matmul_nn).

//#include matmul_params

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
// f32 B is read as vec4 (one 16-byte load; four scalar loads cost ~35% on llvmpipe, bench/RESULTS.md);
// f16/bf16 B is packed two to a u32 word, Q4/Q8 B in blocks (shaders/include/block_formats.wgsl).
//#if B_DTYPE == 0
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
//#else
@group(0) @binding(2) var<storage, read> b: array<u32>;
//#include block_formats
//#endif
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// Four consecutive elements of B starting at element e (a multiple of 4).
fn load_b4(e: u32) -> vec4<f32> {
//#if B_DTYPE == 0
    return b[e >> 2u];
//#else
    if (B_DTYPE == 1u) {
        let w = e >> 1u;
        return vec4<f32>(unpack2x16float(b[w]), unpack2x16float(b[w + 1u]));
    } else if (B_DTYPE >= 3u) {
        return load_block4(e);
    }
    let w0 = b[e >> 1u];
    let w1 = b[(e >> 1u) + 1u];
    return bitcast<vec4<f32>>(vec4<u32>(w0 << 16u, w0 & 0xffff0000u, w1 << 16u, w1 & 0xffff0000u));
//#endif
}

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
fn matmul_nt(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * TM;
    let col0 = gid.x * TN;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let z = gid.z;
    // Rows and columns past the edge re-read the last valid one and are dropped at the store.
    //#for i in TM
    let a${i} = (p.a_off + z * p.batch_a + min(row0 + ${i}u, p.m - 1u) * p.lda) / 4u;
    //#end
//#if B_BLOCK == 0
    //#for q in TN/4
    //#for t in 4
    let b${q}_${t} = p.b_off + z * p.batch_b + min(col0 + ${q}u * 4u + ${t}u, p.n - 1u) * p.ldb;
    //#end
    //#end
    //#for i in TM
    //#for q in TN/4
    var acc${i}_${q} = vec4<f32>(0.0);
    //#end
    //#end
    for (var kk = 0u; kk < p.k / 4u; kk++) {
        //#for q in TN/4
        //#for t in 4
        let w${q}_${t} = load_b4(b${q}_${t} + 4u * kk);
        //#end
        //#end
        //#for i in TM
        let x${i} = a[a${i} + kk];
        //#for q in TN/4
        acc${i}_${q} += vec4<f32>(dot(x${i}, w${q}_0), dot(x${i}, w${q}_1), dot(x${i}, w${q}_2), dot(x${i}, w${q}_3));
        //#end
        //#end
    }
//#else
    // Block-format B (K in whole blocks of B_BLOCK): a block's scale s and offset o factor out
    // of its part of the dot product, Σ x·(s·q + o) = s·Σ x·q + o·Σ x, so each element costs a
    // code conversion and an FMA, each block and column one scale and offset, and each block and
    // row one Σ x shared by the TN columns. First block of each column, in blocks:
    //#for q in TN/4
    //#for t in 4
    let b${q}_${t} = (p.b_off + z * p.batch_b + min(col0 + ${q}u * 4u + ${t}u, p.n - 1u) * p.ldb) / B_BLOCK;
    //#end
    //#end
    //#for i in TM
    //#for q in TN/4
    var acc${i}_${q} = vec4<f32>(0.0);
    //#end
    //#end
    for (var kb = 0u; kb < p.k / B_BLOCK; kb++) {
        //#for i in TM
        var xsum${i} = vec4<f32>(0.0);
        //#for q in TN/4
        var dq${i}_${q} = vec4<f32>(0.0);
        //#end
        //#end
        for (var j = 0u; j < B_BLOCK / 4u; j++) {
            //#for q in TN/4
            //#for t in 4
            let c${q}_${t} = block_codes4(b${q}_${t} + kb, j);
            //#end
            //#end
            //#for i in TM
            let x${i} = a[a${i} + kb * (B_BLOCK / 4u) + j];
            xsum${i} += x${i};
            //#for q in TN/4
            dq${i}_${q} += vec4<f32>(dot(x${i}, c${q}_0), dot(x${i}, c${q}_1), dot(x${i}, c${q}_2), dot(x${i}, c${q}_3));
            //#end
            //#end
        }
        //#for q in TN/4
        let s${q} = vec4<f32>(block_scale(b${q}_0 + kb), block_scale(b${q}_1 + kb), block_scale(b${q}_2 + kb), block_scale(b${q}_3 + kb));
        let o${q} = vec4<f32>(block_offset(b${q}_0 + kb), block_offset(b${q}_1 + kb), block_offset(b${q}_2 + kb), block_offset(b${q}_3 + kb));
        //#for i in TM
        acc${i}_${q} += s${q} * dq${i}_${q} + o${q} * dot(xsum${i}, vec4<f32>(1.0));
        //#end
        //#end
    }
//#endif
    //#for i in TM
    //#for q in TN/4
    //#for t in 4
    store(row0 + ${i}u, col0 + ${q}u * 4u + ${t}u, z, acc${i}_${q}[${t}]);
    //#end
    //#end
    //#end
}

@compute @workgroup_size(WG_N, WG_M, 1)
fn matmul_nn(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * TM;
    let col0 = gid.x * TN;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let z = gid.z;
    //#for i in TM
    let a${i} = (p.a_off + z * p.batch_a + min(row0 + ${i}u, p.m - 1u) * p.lda) / 4u;
    //#end
    // N is a multiple of 4, so a column quad is entirely inside or entirely dropped.
    //#for q in TN/4
    let b${q} = p.b_off + z * p.batch_b + min(col0 + ${q}u * 4u, p.n - 4u);
    //#end
    //#for i in TM
    //#for q in TN/4
    var acc${i}_${q} = vec4<f32>(0.0);
    //#end
    //#end
    for (var kk = 0u; kk < p.k / 4u; kk++) {
        //#for i in TM
        let x${i} = a[a${i} + kk];
        //#end
        //#for t in 4
        //#for q in TN/4
        let w${t}_${q} = load_b4(b${q} + (4u * kk + ${t}u) * p.ldb);
        //#end
        //#for i in TM
        //#for q in TN/4
        acc${i}_${q} = fma(vec4<f32>(x${i}[${t}]), w${t}_${q}, acc${i}_${q});
        //#end
        //#end
        //#end
    }
    //#for i in TM
    //#for q in TN/4
    //#for t in 4
    store(row0 + ${i}u, col0 + ${q}u * 4u + ${t}u, z, acc${i}_${q}[${t}]);
    //#end
    //#end
    //#end
}

@compute @workgroup_size(WG_N, WG_M, 1)
fn matmul_tn(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * TM;
    let col0 = gid.x * TN;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let z = gid.z;
    // M and N are multiples of 4: row and column quads are entirely inside or dropped.
    //#for r in TM/4
    let a${r} = p.a_off + z * p.batch_a + min(row0 + ${r}u * 4u, p.m - 4u);
    //#end
    //#for q in TN/4
    let b${q} = p.b_off + z * p.batch_b + min(col0 + ${q}u * 4u, p.n - 4u);
    //#end
    //#for r in TM/4
    //#for t in 4
    //#for q in TN/4
    var acc${r}_${t}_${q} = vec4<f32>(0.0);
    //#end
    //#end
    //#end
    for (var kk = 0u; kk < p.k; kk++) {
        //#for q in TN/4
        let w${q} = load_b4(b${q} + kk * p.ldb);
        //#end
        //#for r in TM/4
        let x${r} = a[(a${r} + kk * p.lda) / 4u];
        //#for t in 4
        //#for q in TN/4
        acc${r}_${t}_${q} = fma(vec4<f32>(x${r}[${t}]), w${q}, acc${r}_${t}_${q});
        //#end
        //#end
        //#end
    }
    //#for r in TM/4
    //#for t in 4
    //#for q in TN/4
    //#for u in 4
    store(row0 + ${r}u * 4u + ${t}u, col0 + ${q}u * 4u + ${u}u, z, acc${r}_${t}_${q}[${u}]);
    //#end
    //#end
    //#end
    //#end
}

// Decode-sized products (few rows): C = α·A·Bᵀ with K split across KL lanes of a workgroup, so
// neighbouring invocations read neighbouring vec4s of the same row of B (contiguous loads) instead
// of one row each (gathers); the KL partial sums meet in workgroup memory. Workgroup (KL, WG_N):
// WG_N columns per workgroup, all TM rows per invocation.
var<workgroup> partial: array<f32, TM * KL * WG_N>;

@compute @workgroup_size(KL, WG_N, 1)
fn matmul_nt_splitk(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let lane = lid.x;
    let col = wid.x * WG_N + lid.y;
    let z = wid.z;
    let col_c = min(col, p.n - 1u);
    let b_row = p.b_off + z * p.batch_b + col_c * p.ldb;
    //#for i in TM
    let a${i} = (p.a_off + z * p.batch_a + min(${i}u, p.m - 1u) * p.lda) / 4u;
    var acc${i} = 0.0;
    //#end
    for (var kk = lane; kk < p.k / 4u; kk += KL) {
        let w = load_b4(b_row + 4u * kk);
        //#for i in TM
        acc${i} += dot(a[a${i} + kk], w);
        //#end
    }
    //#for i in TM
    partial[(${i}u * WG_N + lid.y) * KL + lane] = acc${i};
    //#end
    workgroupBarrier();
    if (lane == 0u && col < p.n) {
        //#for i in TM
        var s${i} = 0.0;
        for (var l = 0u; l < KL; l++) {
            s${i} += partial[(${i}u * WG_N + lid.y) * KL + l];
        }
        store(${i}u, col, z, s${i});
        //#end
    }
}
