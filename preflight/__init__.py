"""Pre-deploy checks: will `make deploy STAGE=...` work in this account, from this machine?

``python -m preflight --stage dev`` (``make preflight STAGE=dev``; ``make deploy`` runs it
first) prints one plain line per check, OK / WARN / BLOCKER with how to fix it, and exits 1
when anything blocks the deploy. It reads with the caller's AWS credentials and changes
nothing. See docs/infrastructure.md, "First deploy in a new account".
"""
