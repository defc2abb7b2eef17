# Every target makes the venv it needs, so each works on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test lint demo extension farm bench clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check engine addon tests bench demo scripts

test: $(STAMP) lint
	$(BIN)/python scripts/build_extension.py --validate
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python demo/blender_demo.py

# The installable Blender extension: dist/facereplace-<version>.zip (add-on, manifest, bundled engine).
extension:
	$(PYTHON) scripts/build_extension.py

# The Flamenco job types: dist/flamenco/facereplace_convert.js and facereplace_train.js (docs/farm.md).
farm:
	$(PYTHON) scripts/build_extension.py --farm

bench: $(STAMP)
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/convert.py

clean:
	rm -rf $(VENV) demo/out dist
