# The two commands of the README:
#   make book   build the book: environment, every chapter executed with papermill (profile cpu), HTML
#   make test   run the tests (every chapter in the smoke profile, analytic checks, tensorflow-gan parity)
PYTHON ?= python3
VENV   := .venv
TFENV  := .venv-tf
PY     := $(VENV)/bin/python
PROFILE ?= cpu
TF_PINS := tensorflow==2.15.1 tensorflow-probability==0.23.0 tf-keras==2.15.1 tensorflow-hub==0.16.1 tensorflow-gan==2.1.0

.PHONY: book test env tfenv execute html bench clean

env: $(VENV)/.stamp
$(VENV)/.stamp: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# tensorflow-gan needs TensorFlow <= 2.15 and so numpy < 2: its own environment, used only as a reference.
tfenv: $(TFENV)/.stamp
$(TFENV)/.stamp:
	$(PYTHON) -m venv $(TFENV)
	$(TFENV)/bin/python -m pip install -q $(TF_PINS)
	touch $@

test: env tfenv
	DDSS_TF_PYTHON=$(CURDIR)/$(TFENV)/bin/python $(PY) -m pytest -q -ra tests

execute: env
	$(PY) book/execute.py --profile $(PROFILE)

html: env
	$(VENV)/bin/jupyter-book build _build/src --path-output _build/jb
	@echo "HTML: _build/jb/_build/html/index.html"

book: execute html

bench: env
	$(PY) benchmarks/chain_remat.py
	$(PY) benchmarks/ddss_step.py

clean:
	rm -rf _build
