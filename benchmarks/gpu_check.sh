#!/usr/bin/env bash
# Offline GPU check, < 9 minutes in all (300 s + TRAIN_TIMEOUT_S, default 240 s), no network:
#   1. the samplers (vLLM beam search + sampling, HF baseline, log-prob agreement, a Ray SamplerPool GPU actor) on a
#      random-weight 1B Llama built on the machine itself -> $OUT/gpu_check.json (or the path given as $1);
#   2. the learner: one DeepSpeed ZeRO-2 LoRA run of the same kind of model on the GPU, tokens/s and peak memory
#      -> the same name with _training.json.
# Each part has its own time limit, so a hang in one still leaves the other's numbers.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_FILE="${1:-${OUT:-.}/gpu_check.json}"
TRAIN_FILE="${OUT_FILE%.json}_training.json"
PYTHON="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
# TOKENIZER_DIR: a tokenizer folder for the random models where the embedded model's package is not installed.
TOKENIZER_ARGS=()
[ -n "${TOKENIZER_DIR:-}" ] && TOKENIZER_ARGS=(--tokenizer-dir "$TOKENIZER_DIR")
timeout 300 "$PYTHON" benchmarks/gpu_check.py --out "$OUT_FILE" "${TOKENIZER_ARGS[@]}" "${@:2}"
samplers=$?
timeout "${TRAIN_TIMEOUT_S:-240}" "$PYTHON" benchmarks/training_throughput.py --model random-1b --gpu --workers 1 \
    --strategies deepspeed --skip-single --steps 8 "${TOKENIZER_ARGS[@]}" > "${TRAIN_FILE%.json}.log" 2>&1
training=$?
tail -n 1 "${TRAIN_FILE%.json}.log" > "$TRAIN_FILE"
echo "gpu_check: samplers exit $samplers, training exit $training; results in $OUT_FILE and $TRAIN_FILE"
[ "$samplers" -eq 0 ] && [ "$training" -eq 0 ]
