# stm-lab: one entry point. `make book` sets everything up and builds the book from the committed cpu results
# (PROFILE=smoke: tiny untrained models, no results needed); `make test` runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= cpu
# idle OpenMP threads spin by default, which stalls a shared 2-core machine
export OMP_WAIT_POLICY ?= PASSIVE

NPM    ?= npm
# the book's in-browser lab runs the models with onnxruntime-web, installed from the committed lock file
LAB_RUNTIME := book/lab/node_modules/onnxruntime-web/package.json

.PHONY: setup lab-runtime book notebooks test results clean
.DEFAULT_GOAL := book

# the virtual environment is rebuilt when pyproject.toml changes
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; run with PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

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
	$(PY) -m stm_lab.cli notebooks --profile $(PROFILE)

# a failing notebook is reported, the book is still built from the others, and make then fails
book: setup lab-runtime
	$(PY) -m stm_lab.cli notebooks --profile $(PROFILE); status=$$?; \
	$(VENV)/bin/jupyter-book build . --all --keep-going -W || exit 1; \
	echo "Book: file://$(CURDIR)/_build/html/index.html"; exit $$status

test: setup lab-runtime
	$(PY) -m pytest -q

# recompute the committed results that need no training (parameters and MACs, Table III)
results: setup
	$(PY) -m stm_lab.cli complexity

clean:
	rm -rf _build book/generated
