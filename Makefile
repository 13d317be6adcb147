# Two front-door commands: `make demo` and `make test`. Each builds .venv from scratch if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qrobust-installed

.PHONY: venv demo demo-quick test test-fast browser bench bench-llmcompressor clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: venv
	$(BIN)/qrobust demo --out demo-out

demo-quick: venv
	$(BIN)/qrobust demo --quick --out demo-out-quick

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# headless Chromium + its driver (Debian packages) and Selenium, for tests/test_report_browser.py
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser: venv
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[browser]'
	$(BIN)/python -m pytest -q tests/test_report_browser.py

bench: venv
	$(BIN)/python bench/bench_demo.py
	$(BIN)/python bench/bench_gptq.py
	$(BIN)/python bench/bench_eval.py --json bench/results/eval_vs_lm_eval.json
	$(BIN)/python bench/bench_hvp.py --repeats 15 --json bench/results/hvp_cpu.json
	$(BIN)/python bench/bench_layerwise.py --json bench/results/layerwise_cpu.json
	$(BIN)/python bench/bench_states.py --json bench/results/states_cpu.json

# llm-compressor pins its own transformers, so it gets its own venv next to ours
bench-llmcompressor:
	$(PYTHON) -m venv .venv-llmc
	.venv-llmc/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	.venv-llmc/bin/pip install --quiet --disable-pip-version-check llmcompressor -e .
	.venv-llmc/bin/python bench/bench_gptq.py --repeats 3 --json bench/results/gptq_vs_llmcompressor.json

clean:
	rm -rf $(VENV) .venv-llmc demo-out demo-out-quick
