# `make run`: the embedded demo job. `make test`: lint, type check, whole test suite.
# Both create the virtual environment on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,plots]'
	touch $@

.PHONY: install run test lint results
install: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/reldrop train

lint: $(VENV)/.installed
	$(BIN)/ruff check reldrop pipeline jobs tests
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# `make results`: the studies whose tables the README shows (in process, about 5 h on 2 cores);
# each command writes docs/results/NAME/ and its table between the README's results:NAME markers
results: $(VENV)/.installed
	test -f data/viviano-synthetic/manifest.parquet || $(BIN)/reldrop make-shards --dataset viviano-synthetic --out data/viviano-synthetic
	test -f data/decoy-mnist-strong/manifest.parquet || $(BIN)/reldrop make-shards --dataset decoy-mnist-strong --out data/decoy-mnist-strong
	$(BIN)/reldrop compare --search quick --data data/viviano-synthetic --seeds 3 --epochs 6 --limit 600 --optimizer sgd --lr 0.05 --grid gradmask=0.01,0.03,0.1 --grid rrr=30,100,300,600 --grid actdiff=0.1,1,10 --out docs/results/search-viviano --readme README.md#search-viviano
	$(BIN)/reldrop compare --search quick --data data/viviano-synthetic --methods none,gradmask,rrr,actdiff --seeds 3 --epochs 6 --limit 600 --optimizer adam --lr 0.001 --grid gradmask=0.03,0.1,0.3,1 --grid rrr=100,300,1000,3000 --grid actdiff=0.1,0.3,1,3 --out docs/results/search-viviano-adam --readme README.md#search-viviano-adam
	$(BIN)/reldrop compare --search quick --data data/viviano-synthetic --methods none,gradmask,rrr,actdiff,reldrop-pixel --seeds 3 --epochs 30 --batch-size 32 --limit 500 --optimizer adam --lr 0.001 --grid gradmask=0.1,0.3,1,3 --grid rrr=1000,3000,10000,30000 --grid actdiff=0.03,0.1,0.3,1 --out docs/results/search-viviano-long --readme README.md#search-viviano-long
	$(BIN)/reldrop compare --search quick --data data/viviano-synthetic --seeds 3 --epochs 100 --batch-size 32 --limit 500 --optimizer adam --lr 0.0001 --methods gradmask --grid gradmask=0.3,1,3,10 --out docs/results/search-viviano-ref-gradmask --readme README.md#search-viviano-ref-gradmask
	$(BIN)/reldrop compare --search quick --data data/viviano-synthetic --seeds 3 --epochs 100 --batch-size 32 --limit 500 --optimizer adam --lr 0.0001 --methods none,rrr --grid rrr=10000,100000,1000000 --out docs/results/search-viviano-ref-rrr --readme README.md#search-viviano-ref-rrr
	$(BIN)/reldrop compare --search quick --data data/viviano-synthetic --methods gradmask --seeds 3 --epochs 30 --batch-size 32 --limit 500 --grid gradmask=1,3,10,30,100,1000,10000 --options 'gradmask={"form": "original"}' --out docs/results/search-viviano-gradmask-original
	$(BIN)/reldrop compare --search quick --data data/decoy-mnist-strong --methods none,gradmask,rrr,actdiff,reldrop-pixel --seeds 3 --epochs 6 --batch-size 32 --limit 1000 --optimizer adam --lr 0.001 --grid gradmask=0.1,0.3,1 --grid rrr=100,1000,10000 --grid actdiff=0.03,0.1,0.3 --out docs/results/search-decoy --readme README.md#search-decoy
	$(BIN)/reldrop compare --search quick --data data/decoy-mnist-strong --methods none,gradmask,rrr,actdiff --seeds 3 --epochs 6 --batch-size 32 --limit 1000 --out docs/results/search-decoy-defaults --readme README.md#search-decoy-defaults
	$(BIN)/reldrop compare --staleness --data data/decoy-mnist-strong --seeds 3 --epochs 3 --limit 1000 --out docs/results/staleness-decoy --readme README.md#staleness-decoy
	$(BIN)/reldrop compare --staleness --data data/decoy-mnist-strong --seeds 4 --epochs 6 --limit 1000 --bounds 1,2,4,8,16 --intervals 2 --out docs/results/staleness-decoy-6ep --readme README.md#staleness-decoy-6ep
	$(BIN)/reldrop compare --staleness --data data/viviano-synthetic --seeds 3 --epochs 6 --limit 600 --out docs/results/staleness-viviano --readme README.md#staleness-viviano
