# Two commands: `make run` trains the default agent, `make test` runs the suite.
# Both create .venv when missing. torch is installed first at its exact pin so pip
# takes the local CPU wheel instead of downloading a multi-GB CUDA build; everything else
# is held to the exact pins of constraints.txt (pyproject.toml's dependencies are ranges).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
THREADS ?= 1

.PHONY: run test lint format install bench clean device-wheels device-rehearsal

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,bench,mujoco]"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/tdppo train --threads $(THREADS)

# Two pytest workers (one per core), one torch thread each.
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: install
	$(PY) -m benchmarks all --quick

# GPU machine (README "GPU"): fetch the wheels it lacks into .whl/, and rehearse its check here.
device-wheels:
	bash scripts/fetch_device_wheels.sh

device-rehearsal:
	bash scripts/rehearse_device_check.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
