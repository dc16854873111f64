# sambench: `make run` (set up + the embedded default run) and `make test` (set up + tests).
# Set-up creates .venv with the pinned dependencies of setup.cfg and installs sambench in
# editable mode (only the `sambench` package becomes importable: methods/ and datasets/ are
# plugin folders, so Hugging Face `datasets` is never shadowed).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.sambench-installed

.PHONY: setup run test test-fast bench clean

setup: $(STAMP)

$(STAMP): setup.cfg Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q setuptools==84.2.1 wheel
	rm -rf build/wheel
	mkdir -p build && $(PY) -c "from setuptools import build_meta as b; b.build_editable('build/wheel')" >build/editable.log 2>&1 || (cat build/editable.log; exit 1)
	$(PIP) install -q --force-reinstall --no-deps build/wheel/sambench-*.whl
	$(PIP) install -q "$$(ls build/wheel/sambench-*.whl)[test]"
	touch $(STAMP)

run: setup
	$(PY) tools/train.py

test: setup
	$(VENV)/bin/pytest -q --durations=20

# The edit-test loop: everything but the slow and torchrun tests (about 4 minutes on 2 cores).
test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow and not distributed"

bench: setup
	$(PY) tools/bench.py

clean:
	rm -rf build outputs multirun
