"""Same-run PyTorch baselines for convrec's model benchmarks (fp32, eager attention; the CPU,
or the device named by the config's "device", e.g. cuda, with TF32 off).

Usage: python3 torch_model.py generate|train '<json config>'   → prints one JSON line.
A random LlamaForCausalLM with the given shape stands in for the real checkpoint: speed does
not depend on the weights' values.
"""
import json
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def model_for(c):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=c["vocab"], hidden_size=c["hidden"], intermediate_size=c["ffn"],
        num_hidden_layers=c["layers"], num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
        max_position_embeddings=4096, tie_word_embeddings=True, attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg).float().eval().to(c.get("device", "cpu"))


def sync(c):
    if c.get("device", "cpu").startswith("cuda"):
        torch.cuda.synchronize()


def generate(c):
    m = model_for(c)
    out = {}
    for batch in c["batches"]:
        ids = torch.randint(4, c["vocab"], (batch, c["prompt"]), device=c.get("device", "cpu"))
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
    from peft import LoraConfig, get_peft_model

    m = model_for(c)
    m.train()
    m = get_peft_model(m, LoraConfig(r=c["r"], lora_alpha=2 * c["r"], target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(4, c["vocab"], (c["batch"], c["seq"]), device=c.get("device", "cpu"))
    times = []
    for _ in range(4):  # the first is a warm-up
        sync(c)
        t0 = time.perf_counter()
        loss = m(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        sync(c)
        times.append(time.perf_counter() - t0)
    step = sorted(times[1:])[1]
    out = {"step_s": step, "tok_s": c["batch"] * c["seq"] / step}
    if c.get("device", "cpu").startswith("cuda"):
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


if __name__ == "__main__":
    torch.set_num_threads(int(__import__("os").environ.get("TORCH_THREADS", "2")))
    torch.backends.cuda.matmul.allow_tf32 = False
    mode, cfg = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps({"torch": torch.__version__, **(generate(cfg) if mode == "generate" else train(cfg))}))
