# stm-lab: one entry point. `make book` sets everything up and builds the book from the committed cpu results
# (PROFILE=smoke: tiny test models, their results made first, minutes); `make test` runs the fast tests,
# `make test-all` every test (CI).
VENV   ?= .venv
PY     := $(VENV)/bin/python

# The Python the venv is made from: PYTHON=... when given, else the first of PYTHON_CANDIDATES that runs and is
# >= 3.11 (pyproject's requires-python). find_python prints "<command> <X.Y.Z>" of the first good one, or nothing.
PYTHON_CANDIDATES ?= python3.11 python3.12 python3.13 python3
find_python = $(shell for p in $(1); do \
  v=$$("$$p" -c 'import sys; print(*sys.version_info[:3])' 2>/dev/null) || continue; set -- $$v; \
  if [ "$$1" -gt 3 ] || { [ "$$1" -eq 3 ] && [ "$$2" -ge 11 ]; }; then echo "$$p $$1.$$2.$$3"; break; fi; \
  done 2>/dev/null)
ifeq ($(origin PYTHON),undefined)
FOUND_PYTHON := $(call find_python,$(PYTHON_CANDIDATES))
PYTHON := $(word 1,$(FOUND_PYTHON))
else
PYTHON_GIVEN := yes
FOUND_PYTHON := $(call find_python,$(PYTHON))
endif
PYTHON_VERSION := $(word 2,$(FOUND_PYTHON))
# The venv records the X.Y it was made with (.venv/.python; a venv made before that is asked directly); a venv's
# packages are built for one X.Y, so another one rebuilds it from scratch.
VENV_HAS := $(strip $(or $(file < $(VENV)/.python),$(shell $(PY) -c 'import sys; print(*sys.version_info[:2], sep=".")' 2>/dev/null)))
VENV_WANTS := $(basename $(PYTHON_VERSION))
VENV_STALE := $(if $(and $(VENV_WANTS),$(filter $(VENV_WANTS),$(VENV_HAS))),,yes)

PROFILE ?= cpu
# the notebooks only read results: at the smoke profile (not committed) every result they read is made first, by the
# command the tests' smoke_results fixture runs (tests/conftest.py); the cpu results are committed
SMOKE_RESULTS = $(if $(filter smoke,$(PROFILE)),$(PY) -m stm_lab.cli reproduce --profile smoke --skip notebooks book)
# idle OpenMP threads spin by default, which stalls a shared 2-core machine
export OMP_WAIT_POLICY ?= PASSIVE

NPM    ?= npm
# the book's in-browser lab runs the models with onnxruntime-web, installed from the committed lock file
LAB_RUNTIME := book/lab/node_modules/onnxruntime-web/package.json

.PHONY: setup lab-runtime book notebooks test test-all results clean lab app which-python FORCE
.DEFAULT_GOAL := book

# the virtual environment is updated when pyproject.toml changes, and made anew when the chosen Python's X.Y differs
$(VENV)/.installed: pyproject.toml $(if $(VENV_STALE),FORCE)
	@test -n "$(PYTHON_VERSION)" || { echo "$(if $(PYTHON_GIVEN),PYTHON=$(PYTHON) does not run or is older than\
	 3.11,no Python >= 3.11 found (tried $(PYTHON_CANDIDATES))): install one, or run make PYTHON=/path/to/python3.11-or-newer"; exit 1; }
	@echo "Python: $(PYTHON) ($(PYTHON_VERSION))$(if $(and $(VENV_STALE),$(VENV_HAS)),; $(VENV) has Python $(VENV_HAS): made anew)"
	$(if $(VENV_STALE),$(PYTHON) -m venv --clear $(VENV),test -x $(PY) || $(PYTHON) -m venv $(VENV))
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	echo $(VENV_WANTS) > $(VENV)/.python
	touch $@

FORCE:

# the interpreter make would use, and the venv's
which-python:
	@echo "$(or $(FOUND_PYTHON),none (PYTHON=$(PYTHON)))"
	@echo "venv $(VENV): $(or $(VENV_HAS),none)$(if $(and $(VENV_STALE),$(VENV_HAS)), (will be made anew))"

setup: $(VENV)/.installed

# without npm the book is still built; its lab page then says that the runtime is missing, and the browser tests skip
$(LAB_RUNTIME): book/lab/package-lock.json
	@if command -v $(NPM) >/dev/null; then \
	  { $(NPM) ci --prefix book/lab --ignore-scripts --no-audit --no-fund --loglevel=error && touch $@; } \
	  || echo "npm ci failed: the book's lab will lack its runtime"; \
	else echo "npm not found: the book's lab will lack its runtime (install Node.js and npm, then run make again)"; fi

lab-runtime: $(LAB_RUNTIME)

# executed copies of the notebooks (book/generated/), then the HTML book (_build/html)
notebooks: setup
	$(SMOKE_RESULTS)
	$(PY) -m stm_lab.cli notebooks --profile $(PROFILE)

# a failing notebook is reported, the book is still built from the others, and make then fails
book: setup lab-runtime
	$(SMOKE_RESULTS)
	$(PY) -m stm_lab.cli notebooks --profile $(PROFILE); status=$$?; \
	$(VENV)/bin/jupyter-book build . --all --keep-going -W || exit 1; \
	echo "Book: file://$(CURDIR)/_build/html/index.html"; exit $$status

# two tiers (pyproject.toml's e2e marker): `test` leaves out the end-to-end tests (book and notebook builds, browsers,
# CLI batteries, the wheel install), `test-all` runs every test (.ci/run)
test: setup
	$(PY) -m pytest -q -m 'not e2e'

test-all: setup lab-runtime
	$(PY) -m pytest -q

# recompute the committed results that need no training (parameters and MACs, Table III)
results: setup
	$(PY) -m stm_lab.cli complexity

# JupyterLab on the notebooks, and the kernel lab as a Voila app (notebooks/app/lab_app.ipynb); both print their URL
# and open no browser (a headless machine: forward the port, or LAB_IP/APP_IP=0.0.0.0 to listen beyond localhost)
LAB_IP   ?= 127.0.0.1
LAB_PORT ?= 8888
APP_IP   ?= 127.0.0.1
APP_PORT ?= 8866

lab: setup
	@test -x $(VENV)/bin/jupyter-lab || { echo "JupyterLab is not in $(VENV): $(PY) -m pip install -e '.[lab]'"; exit 1; }
	$(VENV)/bin/jupyter-lab --no-browser --ip=$(LAB_IP) --port=$(LAB_PORT) --ServerApp.root_dir=notebooks \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root)  # containers often run as root, which Jupyter refuses unasked

app: setup
	@test -x $(VENV)/bin/voila || { echo "Voila is not in $(VENV): $(PY) -m pip install -e '.[lab]'"; exit 1; }
	@echo "The lab app: http://$(APP_IP):$(APP_PORT)/ (Ctrl-C stops it; each browser tab gets its own kernel)"
	$(VENV)/bin/voila notebooks/app/lab_app.ipynb --no-browser --Voila.ip=$(APP_IP) --port=$(APP_PORT) \
	  --Voila.port_retries=0

clean:
	rm -rf _build book/generated
