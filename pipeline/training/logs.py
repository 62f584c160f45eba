"""Keep a run's console readable: silence known-noisy loggers in every Ray worker process.

Installed as the runtime environment's ``worker_process_setup_hook``. Without the dashboard,
Ray Train's placement-group cleaner cannot reach the state API and logs one warning per check
("Failed to query Ray Train Controller actor state"): half of a demo run's console. Ray Data's
progress bars, drawn by every trainer worker that iterates a dataset, are switched off too: the
trainer prints its own progress lines.
"""

from __future__ import annotations

import logging

__all__ = ["NOISY_LOGGERS", "quiet_worker"]

NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_worker() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
