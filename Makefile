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
	$(BIN)/ruff check reldrop pipeline jobs studies tests
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# `make results`: the studies (studies/, not installed) whose tables docs/results.md shows (in
# process, about 5 h on 2 cores); each writes docs/results/NAME/ and its table between the
# results:NAME markers of docs/results.md
results: $(VENV)/.installed
	test -f data/viviano-synthetic/manifest.parquet || $(BIN)/reldrop make-shards --dataset viviano-synthetic --out data/viviano-synthetic
	test -f data/decoy-mnist-strong/manifest.parquet || $(BIN)/reldrop make-shards --dataset decoy-mnist-strong --out data/decoy-mnist-strong
	$(BIN)/python -m studies.search --data data/viviano-synthetic --seeds 3 --epochs 6 --limit 600 --optimizer sgd --lr 0.05 --grid gradmask=0.01,0.03,0.1 --grid rrr=30,100,300,600 --grid actdiff=0.1,1,10 --out docs/results/search-viviano --table docs/results.md#search-viviano
	$(BIN)/python -m studies.search --data data/viviano-synthetic --methods none,gradmask,rrr,actdiff --seeds 3 --epochs 6 --limit 600 --optimizer adam --lr 0.001 --grid gradmask=0.03,0.1,0.3,1 --grid rrr=100,300,1000,3000 --grid actdiff=0.1,0.3,1,3 --out docs/results/search-viviano-adam --table docs/results.md#search-viviano-adam
	$(BIN)/python -m studies.search --data data/viviano-synthetic --methods none,gradmask,rrr,actdiff,reldrop-pixel --seeds 3 --epochs 30 --batch-size 32 --limit 500 --optimizer adam --lr 0.001 --grid gradmask=0.1,0.3,1,3 --grid rrr=1000,3000,10000,30000 --grid actdiff=0.03,0.1,0.3,1 --out docs/results/search-viviano-long --table docs/results.md#search-viviano-long
	$(BIN)/python -m studies.search --data data/viviano-synthetic --seeds 3 --epochs 100 --batch-size 32 --limit 500 --optimizer adam --lr 0.0001 --methods gradmask --grid gradmask=0.3,1,3,10 --out docs/results/search-viviano-ref-gradmask --table docs/results.md#search-viviano-ref-gradmask
	$(BIN)/python -m studies.search --data data/viviano-synthetic --seeds 3 --epochs 100 --batch-size 32 --limit 500 --optimizer adam --lr 0.0001 --methods none,rrr --grid rrr=10000,100000,1000000 --out docs/results/search-viviano-ref-rrr --table docs/results.md#search-viviano-ref-rrr
	$(BIN)/python -m studies.search --data data/viviano-synthetic --methods gradmask --seeds 3 --epochs 30 --batch-size 32 --limit 500 --grid gradmask=1,3,10,30,100,1000,10000 --options 'gradmask={"form": "original"}' --out docs/results/search-viviano-gradmask-original
	$(BIN)/python -m studies.search --data data/decoy-mnist-strong --methods none,gradmask,rrr,actdiff,reldrop-pixel --seeds 3 --epochs 6 --batch-size 32 --limit 1000 --optimizer adam --lr 0.001 --grid gradmask=0.1,0.3,1 --grid rrr=100,1000,10000 --grid actdiff=0.03,0.1,0.3 --out docs/results/search-decoy --table docs/results.md#search-decoy
	$(BIN)/python -m studies.search --data data/decoy-mnist-strong --methods none,gradmask,rrr,actdiff --seeds 3 --epochs 6 --batch-size 32 --limit 1000 --out docs/results/search-decoy-defaults --table docs/results.md#search-decoy-defaults
	$(BIN)/python -m studies.staleness --data data/decoy-mnist-strong --seeds 3 --epochs 3 --limit 1000 --out docs/results/staleness-decoy --table docs/results.md#staleness-decoy
	$(BIN)/python -m studies.staleness --data data/decoy-mnist-strong --seeds 4 --epochs 6 --limit 1000 --bounds 1,2,4,8,16 --intervals 2 --out docs/results/staleness-decoy-6ep --table docs/results.md#staleness-decoy-6ep
	$(BIN)/python -m studies.staleness --data data/viviano-synthetic --seeds 3 --epochs 6 --limit 600 --out docs/results/staleness-viviano --table docs/results.md#staleness-viviano
