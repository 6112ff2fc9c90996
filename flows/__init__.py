"""Prefect flows: composition only. Each calls the tasks of :mod:`tasks.lifecycle` in order.

Flows are plain callables for ad hoc use from Python::

    from flows.pipeline import run_pipeline
    run_pipeline("jobtypes.demo:SnowCover")
"""
