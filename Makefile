# The README's two commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench bench-long gpu-prepare clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/farm demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/kernels.py
	$(PY) bench/render.py

bench-long: $(VENV)/.installed  # a 2-hour 96 kHz programme streamed: ~10 GB of disk, ~20 min on 2 cores
	$(PY) bench/long.py

gpu-prepare: $(VENV)/.installed  # issue 5: wheels for the device into .whl/, then the GPU script's CPU dry run
	bench/gpu_run.sh prepare
	bench/gpu_run.sh --cpu-only

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
