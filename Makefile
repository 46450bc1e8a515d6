# Two commands from a fresh clone: `make demo` and `make test`. Each bootstraps .venv.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
PMG := $(VENV)/bin/pmg

.PHONY: venv demo test test-fast bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev,dask]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: venv
	$(PMG) demo

test: venv
	$(VENV)/bin/python -m pytest -q tests

test-fast: venv
	$(VENV)/bin/python -m pytest -q tests -m "not slow"

bench: venv
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) pmg-warehouse
