"""``python -m preflight --stage dev``: see preflight/cli.py."""

import os
import sys

# jsii prints a Node end-of-life banner on import unless told not to (as the Makefile does).
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from preflight.cli import main

sys.exit(main())
