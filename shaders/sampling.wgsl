// Next-token sampling on the GPU, one workgroup per sequence, over full-vocabulary logits of the
// decode rows only (batch × vocab, never batch × length × vocab). Hugging Face's order:
// temperature, then top-k, then top-p on the renormalised top-k distribution; then a draw.
// The draw is the Gumbel-max trick — argmax(z/T + g), g = −log(−log u) — exact sampling from
// softmax(z/T) in one pass; temperature 0 is argmax (greedy). Thresholds for top-k and top-p are
// found by bisection on the logit value (no sort), each step a workgroup reduction.
// Randomness: a counter-based hash of (seed, sequence, step, token), so a sequence's draws do not
// depend on the batch it runs in.
// Specialisation: WG (power of two), ITERS (bisection steps).

struct Params {
    rows: u32,
    vocab: u32,
    top_k: u32,        // 0: off
    step: u32,
    temperature: f32,  // 0: greedy
    top_p: f32,        // ≥ 1: off
    seed_lo: u32,
    seed_hi: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> row_ids: array<u32>; // per row: stable sequence id for the RNG
@group(0) @binding(3) var<storage, read_write> out_ids: array<u32>;

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;

const NEG_INF: f32 = -3.0e38;

fn hash(x: u32) -> u32 {
    // lowbias32 (Chris Wellons): a well-mixed 32-bit integer hash.
    var v = x;
    v ^= v >> 16u;
    v *= 0x7feb352du;
    v ^= v >> 15u;
    v *= 0x846ca68bu;
    v ^= v >> 16u;
    return v;
}

fn uniform01(seq: u32, token: u32) -> f32 {
    let h = hash(hash(hash(hash(p.seed_lo ^ 0x9e3779b9u) ^ p.seed_hi) ^ seq) ^ hash(p.step * 0x85ebca6bu + 0x632be5abu) ^ hash(token));
    // 24 random bits, strictly inside (0, 1)
    return (f32(h >> 8u) + 0.5) / 16777216.0;
}

fn reduce_max(v: f32, lid: u32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_f[lid] = max(red_f[lid], red_f[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
}

fn reduce_min(v: f32, lid: u32) -> f32 {
    return -reduce_max(-v, lid);
}

fn reduce_sum(v: f32, lid: u32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_f[lid] = red_f[lid] + red_f[lid + s];
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
}

fn reduce_count(v: u32, lid: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_u[lid] = red_u[lid] + red_u[lid + s];
        }
        workgroupBarrier();
    }
    let r = red_u[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn sample(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.x;
    let lid = lid3.x;
    let base = row * p.vocab;
    let greedy = p.temperature <= 0.0;
    let inv_t = select(1.0 / p.temperature, 1.0, greedy);

    // Range of scaled logits.
    var local_max = NEG_INF;
    var local_min = -NEG_INF;
    for (var v = lid; v < p.vocab; v += WG) {
        let z = logits[base + v] * inv_t;
        local_max = max(local_max, z);
        local_min = min(local_min, z);
    }
    let z_max = reduce_max(local_max, lid);
    let z_min = reduce_min(local_min, lid);

    // Threshold: keep tokens with z ≥ cut. top-k: the largest cut keeping ≥ k tokens.
    var cut = z_min;
    if (!greedy && p.top_k > 0u && p.top_k < p.vocab) {
        var lo = z_min; // count(z ≥ lo) ≥ k always
        var hi = z_max;
        for (var it = 0u; it < ITERS; it++) {
            let mid = 0.5 * (lo + hi);
            var c = 0u;
            for (var v = lid; v < p.vocab; v += WG) {
                c += select(0u, 1u, logits[base + v] * inv_t >= mid);
            }
            if (reduce_count(c, lid) >= p.top_k) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        cut = lo;
    }
    // top-p on the distribution renormalised over z ≥ cut: the largest threshold whose kept
    // mass is still ≥ top_p.
    if (!greedy && p.top_p < 1.0) {
        var total = 0.0;
        for (var v = lid; v < p.vocab; v += WG) {
            let z = logits[base + v] * inv_t;
            total += select(0.0, exp(z - z_max), z >= cut);
        }
        let mass_all = reduce_sum(total, lid);
        var lo = cut;
        var hi = z_max;
        for (var it = 0u; it < ITERS; it++) {
            let mid = 0.5 * (lo + hi);
            var m = 0.0;
            for (var v = lid; v < p.vocab; v += WG) {
                let z = logits[base + v] * inv_t;
                m += select(0.0, exp(z - z_max), z >= mid);
            }
            if (reduce_sum(m, lid) >= p.top_p * mass_all) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        cut = lo;
    }

    // Draw: argmax of z + Gumbel noise over kept tokens (plain argmax when greedy); ties go to
    // the lowest id, as torch.argmax does.
    var best = NEG_INF;
    var best_id = 0xffffffffu;
    for (var v = lid; v < p.vocab; v += WG) {
        let z = logits[base + v] * inv_t;
        if (z >= cut) {
            var score = z;
            if (!greedy) {
                score = z - log(-log(uniform01(row_ids[row], v)));
            }
            if (score > best) {
                best = score;
                best_id = v;
            }
        }
    }
    let top = reduce_max(best, lid);
    let mine = select(0xffffffffu, best_id, best == top);
    // Lowest id among the maxima.
    red_u[lid] = mine;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_u[lid] = min(red_u[lid], red_u[lid + s]);
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out_ids[row] = red_u[0];
    }
}
