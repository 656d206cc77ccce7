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

# Every committed result file, leaderboard.md and leaderboard.html, from scratch (generates
# ground-v3/test, space-v3/test, superbit-v3/test, cosmos-v3/test and the metacal-v3 and
# metacal-space prefixes, runs every method, submits).
# Metacal runs use the published 2000-stamp prefix of each metacal-v3 split (image metrics
# of every stamp cost ~30 ms on 2 cores; the precision test of m is `deconvbench bias`).
# RESULTS_FLAGS (e.g. --resume) is passed to every run.
METHODS_ALL := --method fft --method wiener --method richardson-lucy --method galsim-mcal
METHODS_NET := --method deconvnet-jax --method deconvnet-torch
RUN := $(BIN)/deconvbench run --out out/results -j 2 $(RESULTS_FLAGS)
results: install
	$(RUN) $(METHODS_ALL) $(METHODS_NET) --dataset ground-v3 --split test
	$(RUN) $(METHODS_ALL) --dataset space-v3 --split test
	$(RUN) $(METHODS_ALL) --method deconvnet-torch --method deconvfilter --dataset cosmos-v3 --split test
	$(RUN) $(METHODS_ALL) --method deconvfilter --option deconvfilter.dataset=superbit-v3 --dataset superbit-v3 --split test
	$(RUN) --method deconvnet-torch --option deconvnet-torch.allow_out_of_family=true --dataset superbit-v3 --split test
	$(RUN) --method deconvfilter --option deconvfilter.dataset=space-v3 --dataset space-v3 --split test
	$(RUN) --method fft --method wiener --metacal --dataset metacal-v3 --n 2000
	$(RUN) --method galsim-mcal --method deconvnet-torch --metacal --dataset metacal-v3 --n 2000
	$(BIN)/deconvbench run -j 2 $(RESULTS_FLAGS) --method fft --metacal --fixnoise --dataset metacal-v3 --split snr50 --n 2000 \
	  --out out/results/fft_metacal-v3-v3_snr50_n2000_fixnoise.json
	$(RUN) --method deconvfilter --dataset ground-v3 --split test
	$(RUN) --method deconvfilter --metacal --dataset metacal-v3 --n 2000
	$(RUN) --method deconvnet-torch --option deconvnet-torch.allow_out_of_family=true --dataset space-v3 --split test
	$(RUN) --method fft --method wiener --metacal --dataset metacal-psfmodel
	$(RUN) --method fft --method wiener --method galsim-mcal --metacal --dataset metacal-space --n 2000
	$(RUN) --method deconvfilter --option deconvfilter.dataset=space-v3 --option deconvfilter.allow_out_of_family=true \
	  --metacal --dataset metacal-space --n 2000
	$(BIN)/deconvbench sensitivity --out out/results -m fft -m wiener -m richardson-lucy --dataset metacal-v3 \
	  --split noiseless --n 2000 --sizes=-0.02,0.02 --e1=-0.005,0.005 --e2=-0.005,0.005
	$(BIN)/deconvbench sensitivity --out out/results -m galsim-mcal -m deconvnet-torch --dataset metacal-v3 \
	  --split noiseless --n 2000 --sizes=-0.02,0.02 --e1=-0.005,0.005 --e2=
	for f in out/results/*.json; do $(BIN)/deconvbench submit --replace "$$f" || exit 1; done
	$(BIN)/deconvbench leaderboard

clean:
	rm -rf $(VENV) data out .pytest_cache
