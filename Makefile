# The two commands of README: `make demo` (the job on sample data) and `make test` (the whole suite).
# Each creates .venv and installs the package with its pinned dependencies when setup.py changed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): setup.py
	@echo "make: installing the job and its test dependencies into $(VENV) (setup.py changed or first run;" \
	  "about 1 min with pip's cache warm, longer while TensorFlow and Beam download)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --progress-bar off -e '.[test]'
	@echo "make: $(VENV) is ready"
	touch $(STAMP)

.PHONY: demo test
demo: $(STAMP)
	$(BIN)/python -m beam_job.demo_data sample
	$(BIN)/python -m beam_job --left sample/users.tfrecord --right sample/items.tfrecord \
	  --output sample/out/pairs --overwrite > sample/run.json
	$(BIN)/python -m beam_job.report sample/out/pairs

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile tests
