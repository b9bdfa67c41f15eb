# rnnkit: two commands for a fresh machine (each makes its own virtual environment).
#   make demo   set up, then train a small language model for a few minutes and print a sample
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.rnnkit-installed

.PHONY: demo test bench parity clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[progress,plot,fast,mkl,jieba,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rnnkit train --out runs/demo --force

test: $(STAMP)
	$(PY) -m pytest -q

# Optional: PyTorch for the live parity tests and the side-by-side benchmarks (CPU build).
$(VENV)/.torch: $(STAMP)
	$(PY) -m pip install --quiet torch==2.13.0
	touch $(VENV)/.torch

parity: $(VENV)/.torch
	$(PY) -m pytest -q tests/test_parity_torch.py

bench: $(VENV)/.torch
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs
