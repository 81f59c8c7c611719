# The two commands of the README:
#   make book   build the book: environment, every chapter executed with papermill (profile cpu), HTML,
#               screenshots, and the real-browser check of the rendered pages
#   make test   run the tests: analytic checks, tensorflow-gan parity, every chapter executed in the smoke
#               profile and rendered, and the real-browser check of that smoke book
PYTHON ?= python3
VENV   := .venv
TFENV  := .venv-tf
PY     := $(VENV)/bin/python
PROFILE ?= cpu
HTML   := _build/jb/_build/html
SMOKE  := _build/smoke
# Chapters and tests compile the same JAX programs in many processes: one on-disk compilation cache.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/_build/jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0.2
TF_PINS := tensorflow==2.15.1 tensorflow-probability==0.23.0 tf-keras==2.15.1 tensorflow-hub==0.16.1 tensorflow-gan==2.1.0

.PHONY: book test env tfenv browser smoke-book execute html bench clean

env: $(VENV)/.stamp
# pip byte-compiles every installed file in one process; skipping that and compiling afterwards in
# two processes takes about half the time (a file that does not compile only stays uncompiled).
$(VENV)/.stamp: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -r requirements.lock
	$(PY) -m pip install -q --no-compile --no-deps -e .
	$(PY) -m compileall -q -j 2 $(VENV)/lib >/dev/null 2>&1 || true
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# tensorflow-gan needs TensorFlow <= 2.15 and so numpy < 2: its own environment, used only as a reference.
tfenv: $(TFENV)/.stamp
$(TFENV)/.stamp:
	$(PYTHON) -m venv $(TFENV)
	$(TFENV)/bin/python -m pip install -q --no-compile $(TF_PINS)
	$(TFENV)/bin/python -m compileall -q -j 2 $(TFENV)/lib >/dev/null 2>&1 || true
	touch $@

# Headless Chromium for tests/test_rendered_book.py and book/screenshots.py (Debian's packages; root + apt).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "make browser: not root or no apt-get: install chromium and chromium-driver yourself" \
	  "(tests/test_rendered_book.py skips without them, and fails under CI=true)"; fi

# Every chapter in the smoke profile, rendered: the tests check the executed notebooks and the pages.
smoke-book: env
	$(PY) book/execute.py --profile smoke --build-dir $(SMOKE) --jobs 2
	$(VENV)/bin/jupyter-book build $(SMOKE)/src --path-output $(SMOKE)/jb -q

# The TensorFlow environment installs beside the main one (pip mostly waits on one core) and the
# smoke book that follows it; the tests then run in TEST_JOBS processes (pytest-xdist; one per core
# of the 2-core budget machine).
TEST_JOBS ?= 2
test: browser
	$(MAKE) -j2 tfenv smoke-book
	DDSS_SMOKE_BUILD=$(CURDIR)/$(SMOKE) DDSS_HTML_DIR=$(CURDIR)/$(SMOKE)/jb/_build/html \
	DDSS_TF_PYTHON=$(CURDIR)/$(TFENV)/bin/python $(PY) -m pytest -q -ra -n $(TEST_JOBS) tests

execute: env
	$(PY) book/execute.py --profile $(PROFILE) --jobs 2

html: env
	$(VENV)/bin/jupyter-book build _build/src --path-output _build/jb
	@echo "HTML: $(HTML)/index.html"

book: execute html browser
	$(PY) book/screenshots.py $(HTML) _build/screenshots
	DDSS_HTML_DIR=$(CURDIR)/$(HTML) $(PY) -m pytest -q -ra tests/test_rendered_book.py

# Every script in benchmarks/ (each prints ratios measured in one run; `--quick` for a short run).
BENCH_ARGS ?=
bench: env
	$(PY) benchmarks/chain_remat.py $(BENCH_ARGS)
	$(PY) benchmarks/ddss_step.py $(BENCH_ARGS)
	$(PY) benchmarks/distill_step.py $(BENCH_ARGS)
	$(PY) benchmarks/integrators_overhead.py $(BENCH_ARGS)
	$(PY) benchmarks/parallel_scaling.py $(BENCH_ARGS)

clean:
	rm -rf _build
