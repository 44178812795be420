# Two commands: `make study` (the default study) and `make test` (the test suite).
# Both create .venv and install the pinned stack on first use; re-running is cheap.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pda-installed
PARAMS ?= parameters/default.yaml
# runs at once (Dask), cores // WORKERS torch threads each; WORKERS=0: serial, in one warm kernel
WORKERS ?= 2
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup study retime smoke test lab plan site clean-outputs

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel; an unpinned torch pulls gigabytes of CUDA.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name pda --display-name "pda (.venv)"
	touch $(STAMP)

setup: $(STAMP)

study: setup
	$(PY) -m pda study $(PARAMS) --workers $(WORKERS)

# After `make study`, with nothing else running: every saved model timed again on every backend
# (runs/<id>/retime.json), then the analysis over those numbers. RETIME_ARGS="--runs '*-sp90-*'" for some.
retime: setup
	$(PY) -m pda retime $(PARAMS) $(RETIME_ARGS)

smoke: setup
	$(PY) -m pda study parameters/smoke.yaml

plan: setup
	$(PY) -m pda plan $(PARAMS) --workers 2 $(PLAN_ARGS)

test: setup
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

lab: setup
	$(VENV)/bin/jupyter lab notebooks $(ROOT_FLAG)

# index.html again from a study's executed notebooks, in its output folder (`make study` writes it at the end).
site: setup
	$(PY) -m pda.site --params $(PARAMS)

clean-outputs:
	rm -rf outputs/runs outputs/figures outputs/notebooks outputs/report.md outputs/index.html outputs/smoke
