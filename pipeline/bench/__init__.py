"""``reldrop bench``: the cost of explanation moved out of the training loop, side by side.

:func:`run_bench` runs the pipeline in ``none``, ``sync`` (in-loop LRP) and ``async``
(explainer actors) modes in one Ray session and compares the trainer's critical path, the
explainer actors' efficiency against a bare zennit loop, weight-sync latency, staleness and
end-to-end throughput; it writes ``bench.json`` and ``bench.md``.
"""

from reldrop.pipeline.bench.suite import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
