# Two entry points on a fresh machine: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED ?= ../shared

.PHONY: demo test venv clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt > $(VENV)/pip.log 2>&1 || (tail -20 $(VENV)/pip.log; exit 1)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m app.demo --data $(SHARED)/data/cifar100_mini.npz

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider -n auto --maxprocesses 8 tests

clean:
	rm -rf $(VENV) data/results checkpoints
