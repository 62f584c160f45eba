"""Research studies beside the product, not installed with it (the lab, as mosaicml/streaming
keeps ``benchmarks/`` and ``simulation/`` outside its package).

Run from a checkout: ``python -m studies.search ...`` (per-method hyperparameter search) and
``python -m studies.staleness ...`` (how stale relevance may be); ``make results`` runs the
ones whose tables ``docs/results.md`` shows. Studies import the product (``reldrop``,
``reldrop.pipeline``); nothing in the product imports them.
"""
