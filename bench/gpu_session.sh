#!/usr/bin/env bash
# Runs every measurement bench/RESULTS.md asks of a GPU session ("How to measure on a GPU") and
# writes each one's output under OUT_DIR. Made for a short loan of a CUDA machine that has torch,
# transformers and peft but no network; the binaries come prebuilt (cargo build --release -p
# convrec-bench) and are found in BIN_DIR (default: target/release beside this script's repo).
#
#   bench/gpu_session.sh pack BIN_DIR      # on the build machine: release build, stripped, with
#                                          # this machine's Vulkan loader beside it (a few MiB)
#   bench/gpu_session.sh OUT_DIR [BIN_DIR]  # on the GPU machine
#
# It stops at once when the only adapter is a CPU. TINY=1 rehearses the whole script at tiny sizes
# (one layer, a few tokens, baselines on the CPU) on any adapter, lavapipe included: every command
# line is checked before a GPU session depends on it.
#
# Environment: CONVREC_TORCH_PYTHON (default python3), CONVREC_ADAPTER (default: the preferred
# adapter, a discrete GPU first), QUICK=1 (the cheap half only: profiles and the 64-completion
# step), BUDGET_S (seconds the whole script may take, default 600: a step that would start past it
# is skipped and noted), ARCHIVE (default OUT_DIR.tar.gz: everything, refreshed after every step,
# for machines that hand back only a few files).
#
# Every step has its own timeout and writes OUT_DIR/NAME.txt (stdout and stderr) and, where the
# command can, OUT_DIR/NAME.json; a failed or timed-out step is noted in OUT_DIR/summary.txt and
# the script goes on. Steps run most important first, so a cut-short session still has them.
set -u

here=$(cd "$(dirname "$0")" && pwd)

if [ "${1:-}" = pack ]; then
    dir=${2:?usage: bench/gpu_session.sh pack BIN_DIR}
    (cd "$here/.." && cargo build --release -p convrec-bench) || exit 1
    mkdir -p "$dir"
    # Debug line tables make the binary ~90 MiB; stripped it carries easily.
    strip -o "$dir/convrec-bench" "$here/../target/release/convrec-bench" 2>/dev/null \
        || cp "$here/../target/release/convrec-bench" "$dir/"
    loader=$(ldconfig -p 2>/dev/null | awk '/libvulkan\.so\.1 .*x86-64/ {print $NF; exit}')
    if [ -n "$loader" ]; then cp -L "$loader" "$dir/libvulkan.so.1"; else echo "no Vulkan loader here to carry"; fi
    du -sh "$dir"/*
    exit 0
fi

out=${1:?usage: bench/gpu_session.sh OUT_DIR [BIN_DIR] (or: pack BIN_DIR)}
out=${out%/}
bin_dir=$(cd "${2:-$here/../target/release}" 2>/dev/null && pwd) || { echo "no folder ${2:-}"; exit 1; }
bench=$bin_dir/convrec-bench
budget=${BUDGET_S:-600}
archive=${ARCHIVE:-$out.tar.gz}
python=${CONVREC_TORCH_PYTHON:-python3}
export CONVREC_TORCH_PYTHON=$python
mkdir -p "$out"
summary=$out/summary.txt
start=$(date +%s)

note() { echo "$*" | tee -a "$summary"; }

if [ ! -x "$bench" ]; then
    note "no convrec-bench at $bench (build it: cargo build --release -p convrec-bench)"
    exit 1
fi

# Vulkan on a headless CUDA machine: a loader shipped beside the binaries is used when the system
# has none, and where the driver's Vulkan ICD file is missing, one is written for its library.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1' && [ -e "$bin_dir/libvulkan.so.1" ]; then
    export LD_LIBRARY_PATH="$bin_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
container_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -n "${VK_ICD_FILENAMES:-}${VK_DRIVER_FILES:-}" ]; then
    :
elif ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
    :
elif [ -e "$container_icd" ]; then
    export VK_DRIVER_FILES=$container_icd
    note "using the NVIDIA Vulkan driver file $container_icd"
elif ldconfig -p 2>/dev/null | grep -q 'libGLX_nvidia\.so\.0'; then
    icd=$out/nvidia_icd.json
    printf '{"file_format_version": "1.0.1", "ICD": {"library_path": "libGLX_nvidia.so.0", "api_version": "1.3"}}\n' >"$icd"
    export VK_ICD_FILENAMES=$icd
    note "wrote $icd for the NVIDIA Vulkan driver"
fi

# A run on a CPU adapter (no NVIDIA Vulkan driver found) would spend the session on lavapipe.
if ! "$bench" adapter >"$out/adapter.json" 2>"$out/adapter-stderr.txt"; then
    note "convrec-bench adapter failed: $(tail -n 1 "$out/adapter-stderr.txt")"
    tar -czf "$archive" -C "$(dirname "$out")" "$(basename "$out")"
    exit 1
fi
if grep -q '"cpu":true' "$out/adapter.json" && [ "${TINY:-0}" != 1 ]; then
    note "only a CPU adapter was found (see adapter.json): is the Vulkan driver there? (TINY=1 rehearses on it)"
    tar -czf "$archive" -C "$(dirname "$out")" "$(basename "$out")"
    exit 1
fi

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc) CPUs"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$python" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tail -1
} >"$out/environment.txt" 2>&1
cat "$out/environment.txt"

# TINY=1: overrides appended to each subcommand's arguments (a later flag wins; list flags would
# add up instead, so those are chosen below).
tiny() {
    [ "${TINY:-0}" = 1 ] || return 0
    case $1 in
        profile) echo --layers 1 --batch 2 --group 2 --prompt 8 --new 3 --train-batch 1 --train-seq 16 ;;
        rl-step) echo --layers 1 --prompts 1 --group 2 --prompt-len 8 --new 4 --micro-batch 2 --torch-device cpu ;;
        model) echo --layers 1 --prompt 4 --new 2 --train-batch 1 --train-seq 8 --torch-device cpu ;;
        kernels) echo --filter rmsnorm --budget-ms 5 --torch-device cpu ;;
        weights) echo --shape smollm2-135m --layers 1 --prompt 4 --new 2 --train-batch 1 --train-seq 8 ;;
    esac
}

# step NAME TIMEOUT_S ARGS…: one convrec-bench command, skipped when the budget is spent.
step() {
    local name=$1 limit=$2
    shift 2
    # shellcheck disable=SC2046 # the overrides are words
    set -- "$@" $(tiny "$1")
    local now=$(( $(date +%s) - start ))
    if [ $(( now + 20 )) -gt "$budget" ]; then
        note "SKIPPED $name: ${now}s of the ${budget}s budget spent"
        return
    fi
    [ $(( budget - now )) -lt "$limit" ] && limit=$(( budget - now ))
    echo "== $name (timeout ${limit}s): convrec-bench $*"
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$bench" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    local took=$(( $(date +%s) - t0 ))
    case $rc in
        0) note "ok      $name (${took}s)" ;;
        124 | 137) note "TIMEOUT $name after ${took}s (partial output in $name.txt)" ;;
        *) note "FAILED  $name rc=$rc (${took}s): $(tail -n 1 "$out/$name.txt")" ;;
    esac
    tail -n 40 "$out/$name.txt"
    tar -czf "$archive" -C "$(dirname "$out")" "$(basename "$out")" 2>/dev/null
}

cuda=(--torch-device cuda)
mixed=(--precision mixed)

# 0. Tensor cores: the square product both ways, then the 64-completion RL step and the profile
#    in mixed precision (f16 operands on cooperative matrices, f32 accumulation).
"$bench" adapter --precision mixed >"$out/adapter-mixed.json" 2>&1
square=(--models none --square 4096)
[ "${TINY:-0}" = 1 ] && square=(--models none --square 64)
step square-mixed 60 kernels "${square[@]}" --budget-ms 300 "${cuda[@]}" "${mixed[@]}" --out "$out/square-mixed.jsonl"
step square-f32 60 kernels "${square[@]}" --budget-ms 300 "${cuda[@]}" --out "$out/square-f32.jsonl"
step rl-step-64-mixed 240 rl-step --prompts 8 --group 8 "${cuda[@]}" "${mixed[@]}" --json "$out/rl-step-64-mixed.json"
step profile-b64-t256-mixed 120 profile --batch 64 --train-batch 4 --train-seq 256 "${mixed[@]}" \
    --json "$out/profile-b64-t256-mixed.json"
# 1. Where a decode step and a training step spend their time (issue 14, item 1).
step profile-b64-t256 120 profile --batch 64 --train-batch 4 --train-seq 256 --json "$out/profile-b64-t256.json"
step profile-b256-t1024 150 profile --batch 256 --train-batch 4 --train-seq 1024 --json "$out/profile-b256-t1024.json"
# 2. The RL step, 64 completions, beside PyTorch bf16 (HF generate + peft under autocast).
step rl-step-64 240 rl-step --prompts 8 --group 8 "${cuda[@]}" --json "$out/rl-step-64.json"
if [ "${QUICK:-0}" != 1 ]; then
    # 3. Prefill/decode and LoRA steps beside PyTorch fp32 and bf16.
    step model-t256 180 model "${cuda[@]}" --new 32 --train-seq 256
    step model-t1024 120 model "${cuda[@]}" --parts train --train-seq 1024
    # 4. The 256-completion RL step.
    step rl-step-256 300 rl-step --prompts 32 --group 8 "${cuda[@]}" --json "$out/rl-step-256.json"
    # 5. Kernels beside cuBLAS fp32 (TF32 off).
    shapes=(--models smollm2,qwen2.5 --tokens 1,8,256,2048 --square 2048,4096)
    [ "${TINY:-0}" = 1 ] && shapes=(--models smollm2 --tokens 1 --square 64)
    step kernels 180 kernels "${shapes[@]}" --budget-ms 200 "${cuda[@]}" --out "$out/kernels.jsonl"
    # 6. Weight memory and speed per storage format (f32, Q8, Q4 blocks; issue 17).
    step weights 120 weights --new 32 --train-seq 256
    # 7. The paper's model sizes (issue 17, item 5): the same at Qwen2.5-0.5B's, Llama-3.2-1B's
    #    and Llama-3.2-3B's shapes (random weights: memory and speed do not depend on them).
    for shape in qwen2.5-0.5b llama-3.2-1b llama-3.2-3b; do
        step "weights-$shape" 200 weights --shape "$shape" --new 32 --train-seq 256
    done
fi
note "total $(( $(date +%s) - start ))s; outputs in $out, all of them in $archive"
tar -czf "$archive" -C "$(dirname "$out")" "$(basename "$out")"
