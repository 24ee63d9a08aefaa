"""Benchmarks (``python -m bench``) and the Lambda cost model (``python -m bench.cost``).

Kept import-free on purpose: ``python -m bench.coldstart`` imports this package before it starts
its clock, and a cold-start measurement must not pay for anything but what it measures.
"""
