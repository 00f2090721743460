// Flash-style attention for GPU adapters: the layouts, masking and stats of
// shaders/attention.wgsl (read its header first), computed tile by tile so that every row a
// workgroup loads from k, v (forward, dq) or q, dout (dk/dv) serves a whole block of rows instead
// of one. Memory stays linear in length: nothing of size T×T is ever stored.
//
// Entry points:
//   attention_flash_forward  one workgroup per (b, key/value head g, block of ROWS query rows,
//                            key split): online softmax over tiles of COLS keys; writes out and
//                            the log-sum-exp, or — when p.splits > 1 — unnormalised partials
//   attention_flash_combine  merges the splits' (max, sum, accumulator) into out and the lse
//   attention_flash_dq       one workgroup per (b, g, block of ROWS query rows): dq over key tiles
//   attention_flash_dkv      one workgroup per (b, g, block of ROWS keys): dk, dv over tiles of
//                            COLS queries of every query head of g in turn (GQA sums without
//                            atomics: one workgroup owns a key row's gradient)
// The backward's delta_i = dout_i · out_i comes from attention_backward.wgsl's attention_delta,
// which runs first.
//
// Query rows of a workgroup are (query, head) pairs of one key/value head, query-major:
// row ρ = i·G + hh for G = heads / kv_heads query heads per key/value head. The rows of a block
// then sit at nearly the same causal position (their key ranges agree) and the heads sharing a
// key/value head share its tiles; a decode step (tq = 1) packs the G heads into one block.
//
// Each owned row has TPR invocations; invocation c holds the row's dimensions
// 4·(c + TPR·n) … 4·(c + TPR·n) + 3 for n < NV (NV = HEAD_DIM / (4·TPR)) in named vec4 registers,
// so the TPR invocations of a row read consecutive 16 bytes of every tile row. A score is a dot
// product over all dimensions: each invocation writes its partial sum to workgroup memory, and
// after a barrier invocation c adds up the partials of tile columns c, c + TPR, ….
//
// Bindings (attention_backward.wgsl's order, so one layout serves every entry point):
//   1 q, 2 k, 3 v, 4 key_start, 5 dout (read; the forward and combine do not use it), 6 stats,
//   7 grad0: out (forward, combine) | dq | dk,   8 grad1: split partials (forward, combine) | dv.
// Split partials, for R = batch·heads·tq rows and S = p.splits: accumulators [S, R, HEAD_DIM],
// then (max, sum) pairs [S, R, 2]; row index (b·heads + h)·tq + i, as stats.
//
// Specialisation: HEAD_DIM, ROWS, COLS, TPR, NV, ACCUMULATE (dq/dk/dv are added into).
// Workgroup memory: COLS·HEAD_DIM + ROWS·COLS·TPR floats (forward); twice that plus 2·COLS
// (backward) — within WebGPU's default 16 KiB for the tiles ops/attention.rs picks.

struct Params {
    batch: u32,
    tq: u32,
    heads: u32,
    kv_heads: u32,
    q_stride: u32,
    k_sb: u32,
    k_sh: u32,
    k_st: u32,
    q_pos0: u32,
    scale: f32,
    tk: u32,
    splits: u32, // key splits of the forward (1: no partials)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> key_start: array<u32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> grad0: array<f32>;
@group(0) @binding(8) var<storage, read_write> grad1: array<f32>;

const WG: u32 = ROWS * TPR;
const D4: u32 = HEAD_DIM / 4u;
const NEG_INF: f32 = -3.0e38;

// Tiles of COLS rows of HEAD_DIM (k or q; v or dout), and per owned row COLS·TPR partial sums.
var<workgroup> tile_a: array<vec4<f32>, COLS * D4>;
var<workgroup> tile_b: array<vec4<f32>, COLS * D4>;
var<workgroup> part_a: array<f32, ROWS * COLS * TPR>;
var<workgroup> part_b: array<f32, ROWS * COLS * TPR>;
var<workgroup> col_stats: array<vec2<f32>, COLS>; // dk/dv: (lse, delta) of the tile's queries

// Rows need not be 16-byte aligned (q_stride, k_st), so these are four scalar loads.
fn load_q4(i: u32) -> vec4<f32> {
    return vec4<f32>(q[i], q[i + 1u], q[i + 2u], q[i + 3u]);
}
fn load_k4(i: u32) -> vec4<f32> {
    return vec4<f32>(k[i], k[i + 1u], k[i + 2u], k[i + 3u]);
}
fn load_v4(i: u32) -> vec4<f32> {
    return vec4<f32>(v[i], v[i + 1u], v[i + 2u], v[i + 3u]);
}
fn load_dout4(i: u32) -> vec4<f32> {
    return vec4<f32>(dout[i], dout[i + 1u], dout[i + 2u], dout[i + 3u]);
}
fn hsum(x: vec4<f32>) -> f32 {
    return x.x + x.y + x.z + x.w;
}

// Element n of invocation c's slice of a row, in vec4s.
fn slice(c: u32, n: u32) -> u32 {
    return c + TPR * n;
}

// Element e of a tile of key (or value) rows t0 … t0 + COLS − 1 (row e / D4, vec4 e % D4). Rows at
// or past `stop` read as zeros: masked weights then multiply zeros, never stale or padding data.
fn kv_tile_elem(from_v: bool, kv_base: u32, t0: u32, stop: u32, e: u32) -> vec4<f32> {
    let t = t0 + e / D4;
    if (t >= stop) {
        return vec4<f32>(0.0);
    }
    let at = kv_base + t * p.k_st + 4u * (e % D4);
    if (from_v) {
        return load_v4(at);
    }
    return load_k4(at);
}

// Element e of a tile of q (or dout) rows of queries i0 … i0 + COLS − 1 of head h; zeros past tq.
fn q_tile_elem(from_dout: bool, b: u32, h: u32, i0: u32, e: u32) -> vec4<f32> {
    let i = i0 + e / D4;
    if (i >= p.tq) {
        return vec4<f32>(0.0);
    }
    let at = (b * p.tq + i) * p.q_stride + h * HEAD_DIM + 4u * (e % D4);
    if (from_dout) {
        return load_dout4(at);
    }
    return load_q4(at);
}

fn sum_part_a(at: u32) -> f32 {
    var s = 0.0;
    for (var e = 0u; e < TPR; e++) {
        s += part_a[at + e];
    }
    return s;
}
fn sum_part_b(at: u32) -> f32 {
    var s = 0.0;
    for (var e = 0u; e < TPR; e++) {
        s += part_b[at + e];
    }
    return s;
}

fn store_grad0_4(at: u32, x: vec4<f32>) {
    var y = x;
    if (ACCUMULATE) {
        y += vec4<f32>(grad0[at], grad0[at + 1u], grad0[at + 2u], grad0[at + 3u]);
    }
    grad0[at] = y.x;
    grad0[at + 1u] = y.y;
    grad0[at + 2u] = y.z;
    grad0[at + 3u] = y.w;
}
fn store_grad1_4(at: u32, x: vec4<f32>) {
    var y = x;
    if (ACCUMULATE) {
        y += vec4<f32>(grad1[at], grad1[at + 1u], grad1[at + 2u], grad1[at + 3u]);
    }
    grad1[at] = y.x;
    grad1[at + 1u] = y.y;
    grad1[at + 2u] = y.z;
    grad1[at + 3u] = y.w;
}

// The query row a forward/dq invocation owns: query i of head h. Workgroup `block` of key/value
// head g holds rows block·ROWS …; rows past the last (inactive) are clamped to it, never stored.
struct QueryRow {
    i: u32,
    h: u32,
    live: bool,
}

fn query_row(g: u32, block: u32, r: u32) -> QueryRow {
    let group = p.heads / p.kv_heads;
    let rows = p.tq * group;
    let row = min(block * ROWS + r, rows - 1u);
    return QueryRow(row / group, g * group + row % group, block * ROWS + r < rows);
}

// One past the last key any row of query block `block` sees (causal). Kept apart from QueryRow:
// loops with barriers need bounds the uniformity analysis can see are uniform.
fn block_end(block: u32) -> u32 {
    let group = p.heads / p.kv_heads;
    let last_row = min(block * ROWS + ROWS, p.tq * group) - 1u;
    return p.q_pos0 + last_row / group + 1u;
}

// Query-row blocks per (sequence, key/value head).
fn query_blocks() -> u32 {
    return (p.tq * (p.heads / p.kv_heads) + ROWS - 1u) / ROWS;
}

// Keys [first, end) cut into `splits` pieces of whole tiles: piece `split` as (begin, stop).
fn key_span(first: u32, end: u32, split: u32, splits: u32) -> vec2<u32> {
    if (first >= end) {
        return vec2<u32>(end, end);
    }
    let per = ((end - first + splits - 1u) / splits + COLS - 1u) / COLS * COLS;
    let begin = min(first + split * per, end);
    return vec2<u32>(begin, min(begin + per, end));
}

@compute @workgroup_size(WG)
fn attention_flash_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let blocks = query_blocks();
    let splits = p.splits;
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= p.batch * p.kv_heads * blocks * splits) {
        return;
    }
    let split = wg % splits;
    let block = (wg / splits) % blocks;
    let g = (wg / (splits * blocks)) % p.kv_heads;
    let b = wg / (splits * blocks * p.kv_heads);
    let r = lid / TPR;
    let c = lid % TPR;
    let row = query_row(g, block, r);
    let span = key_span(key_start[b], block_end(block), split, splits);
    let kv_base = b * p.k_sb + g * p.k_sh;
    let q_base = (b * p.tq + row.i) * p.q_stride + row.h * HEAD_DIM;
    let last = p.q_pos0 + row.i; // this row's last visible key
    let pr = r * COLS * TPR; // this row's partial sums
    //#for n in NV
    let q${n} = load_q4(q_base + 4u * slice(c, ${n}u)) * p.scale;
    var acc${n} = vec4<f32>(0.0);
    //#end
    var m = NEG_INF;
    var l = 0.0;
    for (var t0 = span.x; t0 < span.y; t0 += COLS) {
        for (var e = lid; e < COLS * D4; e += WG) {
            tile_a[e] = kv_tile_elem(false, kv_base, t0, span.y, e);
        }
        workgroupBarrier();
        for (var j = 0u; j < COLS; j++) {
            var s4 = vec4<f32>(0.0);
            //#for n in NV
            s4 = fma(q${n}, tile_a[j * D4 + slice(c, ${n}u)], s4);
            //#end
            part_a[pr + j * TPR + c] = hsum(s4);
        }
        workgroupBarrier();
        // Invocation c completes the scores of columns c, c + TPR, … (masked: NEG_INF) while the
        // value tile replaces the key tile, which no invocation reads any more.
        for (var j = c; j < COLS; j += TPR) {
            let t = t0 + j;
            let visible = row.live && t < span.y && t <= last;
            part_a[pr + j * TPR] = select(NEG_INF, sum_part_a(pr + j * TPR), visible);
        }
        for (var e = lid; e < COLS * D4; e += WG) {
            tile_a[e] = kv_tile_elem(true, kv_base, t0, span.y, e);
        }
        workgroupBarrier();
        var tile_max = NEG_INF;
        for (var j = 0u; j < COLS; j++) {
            tile_max = max(tile_max, part_a[pr + j * TPR]);
        }
        let m_new = max(m, tile_max);
        let correction = exp(m - m_new);
        l *= correction;
        //#for n in NV
        acc${n} *= correction;
        //#end
        for (var j = 0u; j < COLS; j++) {
            let s = part_a[pr + j * TPR];
            let w = select(0.0, exp(s - m_new), s > NEG_INF);
            l += w;
            //#for n in NV
            acc${n} = fma(vec4<f32>(w), tile_a[j * D4 + slice(c, ${n}u)], acc${n});
            //#end
        }
        m = m_new;
        workgroupBarrier(); // the tiles are read before the next ones overwrite them
    }
    if (!row.live) {
        return;
    }
    let stat = (b * p.heads + row.h) * p.tq + row.i;
    if (splits == 1u) {
        let inv_l = select(0.0, 1.0 / l, l > 0.0);
        //#for n in NV
        let o${n} = acc${n} * inv_l;
        grad0[q_base + 4u * slice(c, ${n}u)] = o${n}.x;
        grad0[q_base + 4u * slice(c, ${n}u) + 1u] = o${n}.y;
        grad0[q_base + 4u * slice(c, ${n}u) + 2u] = o${n}.z;
        grad0[q_base + 4u * slice(c, ${n}u) + 3u] = o${n}.w;
        //#end
        if (c == 0u) {
            stats[stat] = select(0.0, m + log(l), l > 0.0);
        }
    } else {
        let n_rows = p.batch * p.heads * p.tq;
        let at = (split * n_rows + stat) * HEAD_DIM;
        //#for n in NV
        grad1[at + 4u * slice(c, ${n}u)] = acc${n}.x;
        grad1[at + 4u * slice(c, ${n}u) + 1u] = acc${n}.y;
        grad1[at + 4u * slice(c, ${n}u) + 2u] = acc${n}.z;
        grad1[at + 4u * slice(c, ${n}u) + 3u] = acc${n}.w;
        //#end
        if (c == 0u) {
            let ml = splits * n_rows * HEAD_DIM + 2u * (split * n_rows + stat);
            grad1[ml] = m;
            grad1[ml + 1u] = l;
        }
    }
}

// One invocation per (row, vec4 of the head dimension), 64 per workgroup on a 2-D grid:
// out = Σ_s e^(m_s − m) acc_s / Σ_s e^(m_s − m) l_s with m = max_s m_s; lse = m + log of the sum.
@compute @workgroup_size(64)
fn attention_flash_combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n_rows = p.batch * p.heads * p.tq;
    let idx = gid.y * nwg.x * 64u + gid.x;
    if (idx >= n_rows * D4) {
        return;
    }
    let stat = idx / D4;
    let d = 4u * (idx % D4);
    let ml0 = p.splits * n_rows * HEAD_DIM;
    var m = NEG_INF;
    for (var s = 0u; s < p.splits; s++) {
        m = max(m, grad1[ml0 + 2u * (s * n_rows + stat)]);
    }
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < p.splits; s++) {
        let ml = ml0 + 2u * (s * n_rows + stat);
        let w = exp(grad1[ml] - m); // an empty split has m_s = NEG_INF, sum and accumulator 0
        l += w * grad1[ml + 1u];
        let at = (s * n_rows + stat) * HEAD_DIM + d;
        acc = fma(vec4<f32>(w), vec4<f32>(grad1[at], grad1[at + 1u], grad1[at + 2u], grad1[at + 3u]), acc);
    }
    let i = stat % p.tq;
    let h = (stat / p.tq) % p.heads;
    let b = stat / (p.tq * p.heads);
    let o = acc * select(0.0, 1.0 / l, l > 0.0);
    let at = (b * p.tq + i) * p.q_stride + h * HEAD_DIM + d;
    grad0[at] = o.x;
    grad0[at + 1u] = o.y;
    grad0[at + 2u] = o.z;
    grad0[at + 3u] = o.w;
    if (d == 0u) {
        stats[stat] = select(0.0, m + log(l), l > 0.0);
    }
}

// dq_i = Σ_j ds_ij k_j with ds_ij = p_ij (dout_i · v_j − delta_i)·scale, p_ij = exp(s_ij − lse_i):
// per tile of COLS keys, partial scores and dout·v products meet in workgroup memory.
@compute @workgroup_size(WG)
fn attention_flash_dq(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let blocks = query_blocks();
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= p.batch * p.kv_heads * blocks) {
        return;
    }
    let block = wg % blocks;
    let g = (wg / blocks) % p.kv_heads;
    let b = wg / (blocks * p.kv_heads);
    let r = lid / TPR;
    let c = lid % TPR;
    let row = query_row(g, block, r);
    let end = block_end(block);
    let n_rows = p.batch * p.heads * p.tq;
    let stat = (b * p.heads + row.h) * p.tq + row.i;
    let lse = stats[stat];
    let delta = stats[n_rows + stat];
    let kv_base = b * p.k_sb + g * p.k_sh;
    let q_base = (b * p.tq + row.i) * p.q_stride + row.h * HEAD_DIM;
    let last = p.q_pos0 + row.i;
    let pr = r * COLS * TPR;
    //#for n in NV
    let q${n} = load_q4(q_base + 4u * slice(c, ${n}u)) * p.scale;
    let do${n} = load_dout4(q_base + 4u * slice(c, ${n}u));
    var dq${n} = vec4<f32>(0.0);
    //#end
    for (var t0 = key_start[b]; t0 < end; t0 += COLS) {
        for (var e = lid; e < COLS * D4; e += WG) {
            tile_a[e] = kv_tile_elem(false, kv_base, t0, end, e);
            tile_b[e] = kv_tile_elem(true, kv_base, t0, end, e);
        }
        workgroupBarrier();
        for (var j = 0u; j < COLS; j++) {
            var s4 = vec4<f32>(0.0);
            var dp4 = vec4<f32>(0.0);
            //#for n in NV
            s4 = fma(q${n}, tile_a[j * D4 + slice(c, ${n}u)], s4);
            dp4 = fma(do${n}, tile_b[j * D4 + slice(c, ${n}u)], dp4);
            //#end
            part_a[pr + j * TPR + c] = hsum(s4);
            part_b[pr + j * TPR + c] = hsum(dp4);
        }
        workgroupBarrier();
        for (var j = c; j < COLS; j += TPR) {
            let t = t0 + j;
            let visible = row.live && t <= last;
            let w = exp(sum_part_a(pr + j * TPR) - lse);
            part_a[pr + j * TPR] = select(0.0, w * (sum_part_b(pr + j * TPR) - delta) * p.scale, visible);
        }
        workgroupBarrier();
        for (var j = 0u; j < COLS; j++) {
            let ds = vec4<f32>(part_a[pr + j * TPR]);
            //#for n in NV
            dq${n} = fma(ds, tile_a[j * D4 + slice(c, ${n}u)], dq${n});
            //#end
        }
        workgroupBarrier();
    }
    if (!row.live) {
        return;
    }
    //#for n in NV
    store_grad0_4(q_base + 4u * slice(c, ${n}u), dq${n});
    //#end
}

// dv_j = Σ_i p_ij dout_i and dk_j = Σ_i ds_ij q_i over every query head of the key/value head:
// the workgroup keeps its ROWS keys' k, v and gradients in registers and streams tiles of COLS
// queries (q and dout) of each head in turn, from the first query that sees its first key.
@compute @workgroup_size(WG)
fn attention_flash_dkv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let blocks = (p.tk + ROWS - 1u) / ROWS;
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= p.batch * p.kv_heads * blocks) {
        return;
    }
    let block = wg % blocks;
    let g = (wg / blocks) % p.kv_heads;
    let b = wg / (blocks * p.kv_heads);
    let r = lid / TPR;
    let c = lid % TPR;
    let t = min(block * ROWS + r, p.tk - 1u);
    let live = block * ROWS + r < p.tk;
    let first = key_start[b];
    let kb = b * p.k_sb + g * p.k_sh + t * p.k_st;
    let pr = r * COLS * TPR;
    //#for n in NV
    let k${n} = load_k4(kb + 4u * slice(c, ${n}u)) * p.scale;
    let v${n} = load_v4(kb + 4u * slice(c, ${n}u));
    var dk${n} = vec4<f32>(0.0);
    var dv${n} = vec4<f32>(0.0);
    //#end
    let n_rows = p.batch * p.heads * p.tq;
    let group = p.heads / p.kv_heads;
    // Queries at positions before the block's first key see none of it; a block of padding
    // keys is seen by no query.
    let t_lo = block * ROWS;
    var i_begin = min(select(0u, t_lo - p.q_pos0, t_lo > p.q_pos0), p.tq);
    if (min(t_lo + ROWS, p.tk) <= first) {
        i_begin = p.tq;
    }
    for (var hh = 0u; hh < group; hh++) {
        let h = g * group + hh;
        for (var i0 = i_begin; i0 < p.tq; i0 += COLS) {
            for (var e = lid; e < COLS * D4; e += WG) {
                tile_a[e] = q_tile_elem(false, b, h, i0, e);
                tile_b[e] = q_tile_elem(true, b, h, i0, e);
            }
            if (lid < COLS) {
                let st = (b * p.heads + h) * p.tq + min(i0 + lid, p.tq - 1u);
                col_stats[lid] = vec2<f32>(stats[st], stats[n_rows + st]);
            }
            workgroupBarrier();
            for (var j = 0u; j < COLS; j++) {
                var s4 = vec4<f32>(0.0);
                var dp4 = vec4<f32>(0.0);
                //#for n in NV
                s4 = fma(k${n}, tile_a[j * D4 + slice(c, ${n}u)], s4);
                dp4 = fma(v${n}, tile_b[j * D4 + slice(c, ${n}u)], dp4);
                //#end
                part_a[pr + j * TPR + c] = hsum(s4);
                part_b[pr + j * TPR + c] = hsum(dp4);
            }
            workgroupBarrier();
            for (var j = c; j < COLS; j += TPR) {
                let i = i0 + j;
                let visible = live && i < p.tq && t >= first && t <= p.q_pos0 + i;
                let w = select(0.0, exp(sum_part_a(pr + j * TPR) - col_stats[j].x), visible);
                let dp = sum_part_b(pr + j * TPR);
                part_a[pr + j * TPR] = w;
                part_b[pr + j * TPR] = w * (dp - col_stats[j].y) * p.scale;
            }
            workgroupBarrier();
            for (var j = 0u; j < COLS; j++) {
                let w = vec4<f32>(part_a[pr + j * TPR]);
                let ds = vec4<f32>(part_b[pr + j * TPR]);
                //#for n in NV
                dv${n} = fma(w, tile_b[j * D4 + slice(c, ${n}u)], dv${n});
                dk${n} = fma(ds, tile_a[j * D4 + slice(c, ${n}u)], dk${n});
                //#end
            }
            workgroupBarrier();
        }
    }
    if (!live) {
        return;
    }
    //#for n in NV
    store_grad0_4(kb + 4u * slice(c, ${n}u), dk${n});
    store_grad1_4(kb + 4u * slice(c, ${n}u), dv${n});
    //#end
}
