# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DATA   ?= $(firstword $(wildcard $(abspath ../shared/data/mitdb) /work/shared/data/mitdb))
export ECGKIT_DATA ?= $(DATA)

.PHONY: install demo quick test docs bench clean

$(VENV)/.installed: pyproject.toml plugins/ecgkit-transnet/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pin torch: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,docs,onnx]" -e plugins/ecgkit-transnet
	touch $@

install: $(VENV)/.installed

demo: install  ## the main job: inter-patient pipeline DS1 -> DS2
	$(VENV)/bin/ecgkit run examples/mitdb_inter_patient.yaml

quick: install
	$(VENV)/bin/ecgkit run examples/mitdb_inter_patient.yaml --quick

test: install
	$(PY) -m pytest -q

docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: install
	$(PY) benchmarks/qrs.py

clean:
	rm -rf $(VENV) site
