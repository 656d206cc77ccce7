# Two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Datasets and results of `make run` stay inside the checkout.
export DECONVBENCH_DATA ?= $(CURDIR)/data

.PHONY: install run test lint results clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all]"
	touch $(STAMP)

run: install
	$(BIN)/deconvbench demo

# lint (ruff check + ruff format --check), then the test suite
test: install lint
	$(BIN)/python -m pytest -q -n 2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every committed result file and leaderboard.md, from scratch (about an hour on 2 cores:
# generates ground-v2/test, space-v2/test and metacal-v2, runs every method, submits).
METHODS_ALL := --method fft --method wiener --method richardson-lucy --method galsim-mcal
METHODS_NET := --method deconvnet-jax --method deconvnet-torch
results: install
	$(BIN)/deconvbench run $(METHODS_ALL) $(METHODS_NET) --dataset ground-v2 --split test --out out/results -j 2
	$(BIN)/deconvbench run $(METHODS_ALL) --dataset space-v2 --split test --out out/results -j 2
	for m in fft wiener galsim-mcal deconvnet-torch; do \
	  $(BIN)/deconvbench run --method $$m --metacal --dataset metacal-v2 --out out/results -j 2 || exit 1; done
	$(BIN)/deconvbench run --method fft --metacal --fixnoise --dataset metacal-v2 --split snr50 \
	  --out out/results/fft_metacal-v2-v2_snr50_fixnoise.json
	for f in out/results/*.json; do $(BIN)/deconvbench submit --replace "$$f" || exit 1; done
	$(BIN)/deconvbench leaderboard

clean:
	rm -rf $(VENV) data out .pytest_cache
