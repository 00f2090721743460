"""Same-run PyTorch baselines for convrec's model benchmarks. convrec-bench embeds this file and
feeds it to the chosen interpreter on standard input; by hand:

    python3 torch_model.py generate|train|rl '<json config>'   → prints one JSON line.

Config: the model's shape (vocab, hidden, ffn, layers, heads, kv_heads), "device" (cpu, cuda) and
"precision":
  fp32  float32 weights, eager attention, TF32 off: the PyTorch column of bench/RESULTS.md so far.
  bf16  what a TRL user runs: SDPA attention; generation with bf16 weights; training with bf16 base
        weights under bf16 autocast, peft's LoRA weights (the master copy) and AdamW state in
        float32.
A random LlamaForCausalLM of the given shape stands in for the checkpoint: speed does not depend
on the weights' values. LoRA: r, alpha = 2r, all 7 projections, no dropout.
"""
import json
import os
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def device(c):
    return c.get("device", "cpu")


def is_bf16(c):
    return c.get("precision", "fp32") == "bf16"


def on_cuda(c):
    return device(c).startswith("cuda")


def model_for(c):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=c["vocab"], hidden_size=c["hidden"], intermediate_size=c["ffn"],
        num_hidden_layers=c["layers"], num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
        max_position_embeddings=4096, tie_word_embeddings=True,
        attn_implementation="sdpa" if is_bf16(c) else "eager",
    )
    m = LlamaForCausalLM(cfg)
    m = m.to(torch.bfloat16) if is_bf16(c) else m.float()
    return m.eval().to(device(c))


def autocast(c):
    return torch.autocast(device_type="cuda" if on_cuda(c) else "cpu", dtype=torch.bfloat16, enabled=is_bf16(c))


def sync(c):
    if on_cuda(c):
        torch.cuda.synchronize()


def reset_peak(c):
    if on_cuda(c):
        torch.cuda.reset_peak_memory_stats()


def peak(c, out):
    if on_cuda(c):
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def with_lora(m, c):
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(m, LoraConfig(r=c["r"], lora_alpha=2 * c["r"], target_modules=TARGETS, lora_dropout=0.0))
    # Master weights in float32 whatever the base's dtype (peft does this by default; made explicit).
    for p in m.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return m


def prompts(c, n, length):
    return torch.randint(4, c["vocab"], (n, length), device=device(c))


def generate(c):
    m = model_for(c)
    out = {}
    for batch in c["batches"]:
        ids = prompts(c, batch, c["prompt"])
        with torch.no_grad():
            m(ids)  # warm-up
            m.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
            sync(c)
            t0 = time.perf_counter()
            m(ids)
            sync(c)
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            m.generate(ids, max_new_tokens=c["new"], min_new_tokens=c["new"], do_sample=False, pad_token_id=0)
            sync(c)
            total = time.perf_counter() - t0
        decode = max(total - prefill, 1e-9)
        out[str(batch)] = {"prefill_tok_s": batch * c["prompt"] / prefill, "decode_tok_s": batch * c["new"] / decode}
    return out


def train(c):
    m = with_lora(model_for(c), c)
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    ids = prompts(c, c["batch"], c["seq"])
    times = []
    reset_peak(c)
    for _ in range(4):  # the first is a warm-up
        sync(c)
        t0 = time.perf_counter()
        with autocast(c):
            loss = m(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        sync(c)
        times.append(time.perf_counter() - t0)
    step = sorted(times[1:])[1]
    return peak(c, {"step_s": step, "tok_s": c["batch"] * c["seq"] / step})


def sample(m, c, ids, group, new):
    """HF generate with sampling at temperature 1, every completion forced to `new` tokens."""
    m.eval()
    with torch.no_grad(), autocast(c):
        return m.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            num_return_sequences=group, max_new_tokens=new, min_new_tokens=new, pad_token_id=0,
        )


def completion_logp(m, x, prompt_len):
    """Log-probs of the completion tokens x[:, prompt_len:], the head on completion rows only
    where transformers can (`logits_to_keep`, as TRL does)."""
    keep = x.shape[1] - prompt_len + 1
    try:
        logits = m(x, logits_to_keep=keep).logits[:, :-1]
    except TypeError:
        logits = m(x).logits[:, prompt_len - 1:-1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, x[:, prompt_len:].unsqueeze(-1)).squeeze(-1)


def grpo_update(m, opt, c, seqs):
    """A GRPO-like update: per micro-batch, the reference (adapter disabled) log-probs without
    grad, then forward + backward of a per-token loss (advantage-weighted ratio plus β·k3 KL,
    token-mean over the batch); one AdamW step."""
    prompt_len, beta, micro = c["prompt"], c["beta"], c["micro_batch"]
    m.train()
    tokens = seqs[:, prompt_len:].numel()
    for s in range(0, seqs.shape[0], micro):
        x = seqs[s:s + micro]
        n = x.shape[1] - prompt_len
        adv = ((torch.arange(n, device=x.device)[None, :] * 3 + torch.arange(x.shape[0], device=x.device)[:, None] * 7)
               % 5).float() / 2 - 1
        with torch.no_grad(), autocast(c), m.disable_adapter():
            ref = completion_logp(m, x, prompt_len)
        with autocast(c):
            logp = completion_logp(m, x, prompt_len)
        d = ref - logp
        loss = (-adv * torch.exp(logp - logp.detach()) + beta * (torch.exp(d) - d - 1)).sum() / tokens
        loss.backward()
    opt.step()
    opt.zero_grad()


def rl(c):
    """One RL step: sampling of prompts × group completions, then the update, timed apart."""
    m = with_lora(model_for(c), c)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
    ids = prompts(c, c["prompts"], c["prompt"])
    # Warm-up of both halves at a small size (kernels, allocator).
    warm = sample(m, c, ids[:1], 2, 2)
    grpo_update(m, opt, c, warm)
    sync(c)
    reset_peak(c)
    t0 = time.perf_counter()
    seqs = sample(m, c, ids, c["group"], c["new"])
    sync(c)
    sampling = time.perf_counter() - t0
    t0 = time.perf_counter()
    grpo_update(m, opt, c, seqs)
    sync(c)
    training = time.perf_counter() - t0
    completions = c["prompts"] * c["group"]
    return peak(c, {
        "sampling_s": sampling, "training_s": training,
        "sample_tok_s": completions * c["new"] / sampling,
        "train_tok_s": completions * (c["prompt"] + c["new"]) / training,
        "completion_tokens": int(seqs.shape[1] - c["prompt"]),
    })


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    mode, cfg = sys.argv[1], json.loads(sys.argv[2])
    run = {"generate": generate, "train": train, "rl": rl}[mode]
    print(json.dumps({"torch": torch.__version__, "precision": cfg.get("precision", "fp32"), **run(cfg)}))
