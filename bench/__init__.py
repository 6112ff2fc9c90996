"""Benchmarks: ``python -m bench.<name>`` measures one part of jobline on this machine."""
