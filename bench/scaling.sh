#!/usr/bin/env bash
# Data-parallel scaling (docs/SCALING.md): the same SFT and Rank-GRPO steps with 1, 2 and 4
# workers started by mpirun, on whatever adapters this machine has (workers share them when there
# are fewer), and a table of step time, tokens/s and time in exchanges from each run's metrics,
# each against the one-worker run of the same invocation.
#
#   bench/scaling.sh OUT_DIR [WORKERS...]      # default workers: 1 2 4
#
# Needs `convrec` built with `--features mpi` (CONVREC, default target/release/convrec) and
# mpirun. The default model and MovieLens data (built here with `convrec data movielens`); the
# RL steps start from tests/fixtures/adapters/smollm2_sft. Environment: SFT_ROWS (rows of the
# SFT run, default 12: 3 steps of 4), MAX_LENGTH (SFT tokens per row, default 512), RL_STEPS
# (default 2), RL_PROMPTS (per step, default 4), G (default 4), NEW_TOKENS (default 64),
# MPIRUN_ARGS (extra mpirun arguments, e.g. a hostfile). Runs already in OUT_DIR are kept (delete
# a run's folder to measure it again); the table averages every step but the first (which also
# builds the plans) where there are several.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: bench/scaling.sh OUT_DIR [WORKERS...]}
shift
if [ $# -gt 0 ]; then workers=("$@"); else workers=(1 2 4); fi
convrec=${CONVREC:-$here/target/release/convrec}
"$convrec" --version | grep -q '(mpi)' || { echo "$convrec was built without --features mpi" >&2; exit 1; }
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 \
    OMPI_MCA_btl_vader_single_copy_mechanism=none

[ -f "$out/data/train.jsonl" ] || "$convrec" data movielens --out "$out/data" --max-users 64
launch() { # WORKERS ARGS...
    local n=$1
    shift
    # shellcheck disable=SC2086
    mpirun -np "$n" --oversubscribe ${MPIRUN_ARGS:-} "$convrec" "$@"
}
for n in "${workers[@]}"; do
    [ -f "$out/sft-$n/adapter/adapter_config.json" ] || {
    echo "== sft, $n worker(s)"
    launch "$n" sft --data "$out/data/train.jsonl" --limit "${SFT_ROWS:-12}" --batch-size 4 --max-length "${MAX_LENGTH:-512}" \
        --save-every 1000 --out "$out/sft-$n" --overwrite
    }
    [ -f "$out/rl-$n/adapter/adapter_config.json" ] || {
    echo "== rank-grpo, $n worker(s)"
    launch "$n" train --adapter "$here/tests/fixtures/adapters/smollm2_sft" --data "$out/data/train.jsonl" \
        --catalog "$out/data/catalog.tsv" --prompts-per-step "${RL_PROMPTS:-4}" --group-size "${G:-4}" \
        --steps "${RL_STEPS:-2}" --max-new-tokens "${NEW_TOKENS:-64}" --max-prompt-length 512 \
        --save-every 1000 --out "$out/rl-$n" --overwrite
    }
done

python3 - "$out" "${workers[@]}" <<'PY' | tee "$out/scaling.md"
import json, sys
out, workers = sys.argv[1], sys.argv[2:]
def steps(path):
    rows = [json.loads(l) for l in open(path) if '"step_s"' in l or '"generate_s"' in l]
    return rows[1:] or rows  # the first step also builds the plans
print("| run | workers | step s | tokens/s | sampling s | exchange s | step time vs 1 worker |")
print("|---|---:|---:|---:|---:|---:|---:|")
for kind in ["sft", "rl"]:
    base = None
    for n in workers:
        rows = steps(f"{out}/{kind}-{n}/metrics.jsonl")
        step_s = sum(r["step_s"] for r in rows) / len(rows)
        tokens = sum(r.get("tokens", 0) for r in rows) / len(rows)
        sampling = sum(r.get("generate_s") or 0.0 for r in rows) / len(rows)
        exchange = sum(r.get("exchange_s", 0.0) for r in rows) / len(rows)
        base = base or step_s
        print(f"| {kind} | {n} | {step_s:.1f} | {tokens / step_s:.1f} | {sampling:.1f} | {exchange:.3f} | {step_s / base:.2f}× |")
PY
