# The two commands of README: `make demo` (the job on sample data) and `make test` (the whole suite).
# Each creates .venv and installs the package with its pinned dependencies when setup.py changed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

.PHONY: demo test
demo: $(STAMP)
	$(BIN)/python -m beam_job.demo_data sample
	$(BIN)/python -m beam_job --left sample/users.tfrecord --right sample/items.tfrecord \
	  --output sample/out/pairs --overwrite > sample/run.json
	$(BIN)/python -m beam_job.report sample/out/pairs

test: $(STAMP)
	$(BIN)/python -m pytest -q tests
