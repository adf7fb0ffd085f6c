# Two commands on a fresh machine: `make run` and `make test`.
# torch is installed before anything that depends on it so pip takes the CPU wheel
# (on these machines it lies on local disk) instead of a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/hybridembed embed "Hybrid search keeps dense and sparse vectors in one record." \
		"BM25 finds exact keywords; dense vectors find meaning." --sparse --multivector
	$(VENV)/bin/hybridembed serve

test: install
	$(VENV)/bin/ruff check hybridembed tests
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check hybridembed tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
