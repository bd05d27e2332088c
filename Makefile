# pricer: make help lists the targets
.DEFAULT_GOAL := help
PY ?= python3

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: ## install torch 2.13.0 (a CPU machine: install the CPU wheel first, README says how), pricer and its test tools
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]" --config-settings editable_mode=compat  # compat: Hydra finds hydra_plugins/

demo: ## the embedded default: tiny model, 4-bit, sample data, CPU, no network, < 3 min
	$(PY) -m pricer.train experiment=demo

test: ## the CI suite (CPU, tiny models, local Hub stand-in, W&B offline), one pytest worker per core
	$(PY) -m pytest -q -n auto

test-fast: ## the quick loop: tests not marked slow (no training, no sweep, no server, no CLI subprocess)
	$(PY) -m pytest -q -n auto -m "not slow"

test-full: ## the suite with the GPU tests (on a GPU machine; they skip without one)
	$(PY) -m pytest -q -n auto -m "slow or gpu or not slow"

lint: ## ruff
	$(PY) -m ruff check pricer tests bench hydra_plugins scripts

bench: ## benchmarks that print numbers and write BENCHMARKS.md (eval and training need a GPU)
	$(PY) bench/sweep_value.py analyse bench/results/sweep_value.json --markdown BENCHMARKS.md  # re-analyse; a new run: bench/sweep_value.py run OUT --gpu
	$(PY) bench/eval_throughput.py
	$(PY) bench/train_throughput.py

clean: ## remove outputs and caches
	rm -rf outputs multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
