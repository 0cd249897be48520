"""The orchestrator: job specs, grid expansion, dispatch to Ray workers, results, reports.

It never touches tensors and never imports torch; Ray is imported only in dispatch.py.
Entry point: `python -m orchestrator submit jobs/sweep.yaml` (see cli.py).
"""
