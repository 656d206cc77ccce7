# Two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Datasets and results of `make run` stay inside the checkout.
export DECONVBENCH_DATA ?= $(CURDIR)/data

.PHONY: install run test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all]"
	touch $(STAMP)

run: install
	$(BIN)/deconvbench demo

test: install
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) data out .pytest_cache
