# Two commands do all set-up on a fresh machine with Python 3.11 and make:
#   make demo   - install into .venv, then run the main job on synthetic phantoms
#   make test   - install into .venv, then run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.covseg-installed
DEMO_OUT ?= demo_out

.PHONY: install demo test lint format bench pretrained clean

install: $(STAMP)

# One pip command, torch pinned together with everything else (requirements/constraints.txt).
# The stamp makes a second run reinstall nothing unless the dependency files changed.
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check \
		-c requirements/constraints.txt torch==2.13.0 -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m covseg demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) benchmarks/run.py --json benchmarks/results.json

# The shipped model and its cross-validation (needs ../shared/data; see MODEL_CARD.md).
pretrained: $(STAMP)
	bash experiments/train_pretrained.sh

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
