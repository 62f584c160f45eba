"""Probe: GradMask's own code form (squared, masked samples only, lambda ramped over 1000 steps)
on viviano-synthetic, 30 epochs, batch 32, Adam 1e-3, 500 images, 3 seeds.

Run twice: lambdas (1, 3, 10, 30) -> search-lam1-30.json (that run's table crashed on the string
option, fixed since), then (100, 1000, 10000) -> search-lam100-10000.*; usage, from the
checkout's root: PYTHONPATH=. python docs/results/search-viviano-gradmask-original/probe.py OUT
(today `python -m studies.search ... --options 'gradmask={"form": "original"}'` does the same).
"""
import sys
from studies.search import SearchConfig, run_search
cfg = SearchConfig(data="data/viviano-synthetic", methods=("gradmask",), seeds=(0, 1, 2), epochs=30,
                   limit=500, batch_size=32, optimizer="adam", lr=1e-3,
                   grids={"gradmask": [{"lam": v, "form": "original"} for v in (100.0, 1000.0, 10000.0)]},
                   out=sys.argv[1])
run_search(cfg)
