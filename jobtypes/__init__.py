"""Job types: the ``JobType`` contract (:mod:`jobtypes.base`) and the bundled demo job type.

A job type declares what one kind of input product becomes: where its products are listed, how
a listed object becomes a product (``parse_product``), the container that processes it, and the
hooks that configure, name and announce its outputs. :mod:`jobtypes.demo` (Sentinel-2-style
snow cover, with its processing in ``demo_assets/``) is the complete example; partners write
theirs in a module of their own, referenced by import path (``module:Class``). The README's
"Adding a job type" is the full contract.
"""
