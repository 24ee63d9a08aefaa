"""Local mode: the serving path on one machine (S3 server, API Gateway emulator, the handler).

`python -m local_mode.demo` (make demo) and `python -m local_mode.serve` (make serve); see
docs/local.md.
"""
