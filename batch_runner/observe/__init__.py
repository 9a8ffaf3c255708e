"""Observing a run: per-batch stats, the engine timeline, the metrics file, progress, the report, cost
and GPU use. Numbers come from what was committed; nothing here changes a result.
"""
