// The clipped policy objective of GRPO-family methods and its gradient with respect to each
// token's log-prob, one invocation per completion (RANK_GRPO.md §7):
//   ρ_t = logp_t − old_t
//   w_t = exp(ℓ): ℓ = mean of ρ over the token's rank bin (LEVEL 0, Rank-GRPO), ρ_t (1, GRPO), or
//         the mean of ρ over the completion (2, GSPO)
//   L_t = −min(w_t A_t, clip(w_t, 1 − ε_low, 1 + ε_high) A_t) + β (exp(ref_t − logp_t) − (ref_t − logp_t) − 1)
//   loss = Σ_t weight_t L_t      (weight_t: the aggregation, e.g. 1/Σ m for token-mean "bnpo")
// The gradient of the clipped term flows through w only on the unclipped branch; through ℓ it is
// shared equally by the tokens ℓ averages.
// Tokens of completion i are [spans[2i], spans[2i] + spans[2i+1]) in every per-token buffer.
// Specialisation: BINS (rank bins incl. the overflow bin, ≥ rec_num + 1), WG.

struct Params {
    completions: u32,
    level: u32,
    rec_num: u32,
    _pad: u32,
    eps_low: f32,
    eps_high: f32,
    beta: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> spans: array<u32>;
@group(0) @binding(2) var<storage, read> items: array<u32>;
@group(0) @binding(3) var<storage, read> adv_weight: array<f32>; // [advantages…, weights…] (2 × tokens)
@group(0) @binding(4) var<storage, read> logp: array<f32>;
@group(0) @binding(5) var<storage, read> old_logp: array<f32>;
@group(0) @binding(6) var<storage, read> ref_logp: array<f32>;
@group(0) @binding(7) var<storage, read_write> grad: array<f32>;
@group(0) @binding(8) var<storage, read_write> loss: array<f32>; // per completion; then clip stats

fn bin_of(t: u32) -> u32 {
    return min(items[t], p.rec_num);
}

@compute @workgroup_size(WG)
fn grpo_loss(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.completions) {
        return;
    }
    let start = spans[2u * i];
    let len = spans[2u * i + 1u];
    let n_tokens = arrayLength(&logp);
    var sum: array<f32, BINS>;
    var count: array<f32, BINS>;
    var seq_sum = 0.0;
    for (var t = start; t < start + len; t++) {
        let r = logp[t] - old_logp[t];
        sum[bin_of(t)] += r;
        count[bin_of(t)] += 1.0;
        seq_sum += r;
    }
    let seq_mean = seq_sum / max(f32(len), 1.0);
    // First pass: loss, the direct KL gradient, and ∂loss/∂ℓ per token (kept in grad[t]
    // temporarily, then redistributed below).
    var acc_loss = 0.0;
    var clipped = 0.0;
    var g_bin: array<f32, BINS>;
    var g_seq = 0.0;
    for (var t = start; t < start + len; t++) {
        let r = logp[t] - old_logp[t];
        var l = r;
        if (p.level == 0u) {
            l = sum[bin_of(t)] / count[bin_of(t)];
        } else if (p.level == 2u) {
            l = seq_mean;
        }
        let w = exp(l);
        let a = adv_weight[t];
        let weight = adv_weight[n_tokens + t];
        let c = clamp(w, 1.0 - p.eps_low, 1.0 + p.eps_high);
        let unclipped = w * a <= c * a;
        let d = ref_logp[t] - logp[t];
        let kl = exp(d) - d - 1.0;
        acc_loss += weight * (-min(w * a, c * a) + p.beta * kl);
        clipped += select(1.0, 0.0, unclipped);
        // ∂L/∂ℓ = ∂L/∂w · w on the unclipped branch.
        let g_l = weight * select(0.0, -a * w, unclipped);
        if (p.level == 0u) {
            g_bin[bin_of(t)] += g_l;
        } else if (p.level == 2u) {
            g_seq += g_l;
        }
        // Direct term (KL), plus GRPO's own-token ratio term.
        grad[t] = weight * p.beta * (1.0 - exp(d)) + select(0.0, g_l, p.level == 1u);
    }
    for (var t = start; t < start + len; t++) {
        if (p.level == 0u) {
            grad[t] += g_bin[bin_of(t)] / count[bin_of(t)];
        } else if (p.level == 2u) {
            grad[t] += g_seq / max(f32(len), 1.0);
        }
    }
    loss[2u * i] = acc_loss;
    loss[2u * i + 1u] = clipped;
}
