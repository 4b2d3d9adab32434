# Two commands do all set-up on a fresh machine with Python 3.11 and make:
#   make demo   - install into .venv, then run the main job on synthetic phantoms
#   make test   - install into .venv, then run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.covseg-installed
DEMO_OUT ?= demo_out
# The browser viewer of `covseg serve`: NiiVue from the npm registry, pinned by version and
# tarball hash, unpacked into a git-ignored folder; its self-contained ES module is copied to
# where the server serves it (also git-ignored). Nothing third-party is committed.
NIIVUE_VERSION := 0.69.0
NIIVUE_INTEGRITY := sha512-YMjQvJgD1W2b7DuoxkwlC4VxbrgIePRJ5qyQzXKxi2v2MBVg285P/CIQyg46oDDGDIcaNlbd+MhtO/edMbXJkA==
NPM_DIR := .viewer-npm
VIEWER_DIR := src/covseg/serve/static/vendor/niivue
VIEWER_STAMP := $(VIEWER_DIR)/.installed-$(NIIVUE_VERSION)

.PHONY: install viewer demo test docs-check screenshot lint format bench pretrained clean

install: $(STAMP) $(VIEWER_STAMP)

# One pip command, torch pinned together with everything else (requirements/constraints.txt).
# The stamp makes a second run reinstall nothing unless the dependency files changed.
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check \
		-c requirements/constraints.txt torch==2.13.0 -e ".[dev]"
	touch $(STAMP)

viewer: $(VIEWER_STAMP)

# `npm pack` fetches the one package tarball (its bundle needs none of its dependencies);
# a rerun does nothing while the stamp of this version exists.
$(VIEWER_STAMP):
	@command -v npm >/dev/null || { echo "make: npm is needed to fetch the viewer (NiiVue)"; exit 1; }
	rm -rf $(NPM_DIR) $(VIEWER_DIR)
	mkdir -p $(NPM_DIR) $(VIEWER_DIR)
	cd $(NPM_DIR) && npm pack --silent --no-fund @niivue/niivue@$(NIIVUE_VERSION) >/dev/null
	$(PYTHON) -c "import base64, hashlib, sys; d = hashlib.sha512(open(sys.argv[1], 'rb').read()).digest(); \
	sys.exit(None if 'sha512-' + base64.b64encode(d).decode() == sys.argv[2] else sys.argv[1] + ': hash mismatch')" \
		$(NPM_DIR)/niivue-niivue-$(NIIVUE_VERSION).tgz $(NIIVUE_INTEGRITY)
	tar -xzf $(NPM_DIR)/niivue-niivue-$(NIIVUE_VERSION).tgz -C $(NPM_DIR) package/dist/index.js package/package.json
	cp $(NPM_DIR)/package/dist/index.js $(VIEWER_DIR)/niivue.js
	cp $(NPM_DIR)/package/package.json $(VIEWER_DIR)/package.json
	touch $@

demo: $(STAMP)
	$(PY) -m covseg demo --out $(DEMO_OUT)

test: $(STAMP) $(VIEWER_STAMP)
	$(PY) -m pytest -q

# The README's demo figures rerun and compared within tolerance, every relative link in README,
# MODEL_CARD and docs/, and their length limits (tests/test_docs.py; `make test` runs it too).
docs-check: $(STAMP)
	$(PY) -m pytest -q tests/test_docs.py

# The README's screenshot of `covseg serve` (docs/serve.png), made by its browser test.
screenshot: $(STAMP) $(VIEWER_STAMP)
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
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache $(NPM_DIR) $(VIEWER_DIR)
