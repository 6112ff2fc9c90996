"""jobline: processing jobs tracked in a database, their lifecycle run as Prefect flows.

This package is the foundation every other package builds on: settings and exceptions only.
The layers above it import downwards only: ``db`` ← ``jobtypes`` ← ``tasks`` ← ``flows`` ←
``api`` / ``cli``.
"""

__version__ = "0.1.0"
