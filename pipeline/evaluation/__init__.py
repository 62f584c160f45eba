"""What tells a user a training worked: ``evaluate_checkpoint`` (``reldrop evaluate``) and the
side-by-side comparison of methods over seeds, ``run_comparison`` (``reldrop compare``).

The research studies built on them (hyperparameter searches, the staleness study, the tables
of docs/results.md) live outside the package, in the repository's ``studies/``.
"""
