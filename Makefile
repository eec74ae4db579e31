# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/python -m pip

.PHONY: demo test install bench bench-tier bench-peer clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Reinstalls when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) algorithms/ppo.py --env-id CartPole-v1

# One pytest worker per core (2 on CI); a test file stays on one worker so that its
# module fixtures (trained agents shared by several tests) are built once.
# --max-worker-restart 0: a worker that dies (a native crash, the OOM killer) ends the session with a report
# naming its test. Replacing it instead left xdist's loadfile scheduler waiting forever on 2026-12-08
# (docs/testing.md).
PYTEST_WORKERS ?= auto

test: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --max-worker-restart 0

# Speed benchmark: ours vs raw env stepping vs peers (peers in their own venv, see benchmarks/README.md).
.venv-peer/bin/python: benchmarks/requirements-peer.txt
	$(PYTHON) -m venv .venv-peer
	.venv-peer/bin/python -m pip install --quiet -r benchmarks/requirements-peer.txt
	touch $@

bench-peer: .venv-peer/bin/python

bench: install bench-peer
	$(PY) benchmarks/bench_ppo.py

# The one benchmark command, by tier: smoke (toy sizes, ~2-4 min cold on 2 cores), cpu, gpu (one H200, <= 8 min).
TIER ?= smoke
bench-tier: install
	$(PY) -m rlzoo.benchmarks.bench --tier $(TIER)

clean:
	rm -rf $(VENV) .venv-peer .jax_cache .pytest_cache runs
