# Two commands do all set-up on a fresh machine with Python 3.11 and make:
#   make demo   - install into .venv, then run the main job on synthetic phantoms
#   make test   - install into .venv, then run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.covseg-installed
DEMO_OUT ?= demo_out

.PHONY: install demo test docs-check screenshot lint format bench pretrained clean

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

# The README's demo figures rerun and compared within tolerance, every relative link in README,
# MODEL_CARD and docs/, and their length limits (tests/test_docs.py; `make test` runs it too).
docs-check: $(STAMP)
	$(PY) -m pytest -q tests/test_docs.py

# The README's screenshots of `covseg serve` (docs/serve.png, docs/compare.png), made by its browser tests.
screenshot: $(STAMP)
	COVSEG_SCREENSHOT=docs/serve.png $(PY) -m pytest -q -p no:cacheprovider tests/test_serve.py -k readme_screenshot

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
