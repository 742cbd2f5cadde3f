# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: demo test test-slow test-scale lint sysdeps clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,fleet]'  # fleet: Ray, for tests/test_fleet.py; no runtime install pulls it
	$(BIN)/pip install -q --no-deps 'silero-vad==6.2.3'  # only its ONNX file is used; --no-deps keeps torch out
	$(BIN)/pip install -q --no-deps 'pipecat-ai==1.14.0'  # only smart-turn-v3.2-cpu.onnx (end-of-turn classifier)
	touch $(STAMP)

sysdeps:
	@tools/install-sysdeps.sh

demo: $(STAMP) sysdeps
	$(BIN)/bcaudio demo --workdir $(DEMO_DIR)

test: $(STAMP) sysdeps
	$(BIN)/pytest

test-slow: $(STAMP) sysdeps
	$(BIN)/pytest -m slow

# The full published size on this machine (about 14 min with the checkpoint kept, 20 min more to write it;
# 32 GB of disk; docs/real-scale.md). SCALE_DIR keeps the 20 GB checkpoint between runs.
SCALE_DIR ?= scale-work
test-scale: $(STAMP) sysdeps
	BCAUDIO_SCALE_DIR=$(SCALE_DIR) $(BIN)/pytest -m scale -s

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
