#!/usr/bin/env bash
# Offline GPU check of the samplers (vLLM beam search + sampling, HF baseline) on a random-weight 1B Llama built on
# the machine itself. Writes $OUT/gpu_check.json (or the path given as $1). Needs no network; aims at < 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_FILE="${1:-${OUT:-.}/gpu_check.json}"
PYTHON="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 470 "$PYTHON" benchmarks/gpu_check.py --out "$OUT_FILE" "${@:2}"
