"""One atheris (libFuzzer) target: ``python -m fuzz.target image|event [libFuzzer flags] [corpus]``.

The function's modules and Pillow are imported instrumented, so Python branch coverage guides
the mutations (Pillow's C decoders are not instrumented; its plugins' Python parsers are). A
``Finding`` propagates to atheris, which saves the input as ``crash-<sha1>`` under
``-artifact_prefix``. The per-input budget is checked in the harness (properties.within); the
libFuzzer flags below are a backstop for what never returns: ``-timeout`` (wall-clock) and
``-rss_limit_mb``. ``python -m fuzz`` runs every target with a time budget and prints a table;
``python -m fuzz.target image build/fuzz/image/crash-...`` replays one input. With
``FUZZ_COSTLIEST_FILE`` set, the most CPU and memory any input took is kept in that JSON file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

try:
    import atheris
except ImportError:
    sys.exit("atheris is not installed: `make fuzz` installs fuzz/requirements.txt")

# Pillow warns about every mutated EXIF block it skips; a warning is not a finding, and thousands
# of them would bury libFuzzer's own report.
warnings.simplefilter("ignore")

with atheris.instrument_imports(include=["PIL", "api", "preprocess", "errors"]):
    from PIL import Image

    # Pillow imports its plugins lazily on the first open: load them now, instrumented.
    Image.init()
    from fuzz import event_input, properties

TARGETS = ("image", "event")


def image_input(data: bytes) -> None:
    properties.check_image(data)


def event_input_check(data: bytes) -> None:
    event, expected = event_input.decode(data)
    if event is not None:  # not JSON: Lambda refuses the invoke, the handler never runs
        properties.check_event(event, expected)


def recording_costliest(check: Callable[[bytes], None], path: Path) -> Callable[[bytes], None]:
    """check, writing properties.COSTLIEST to path whenever it grows (rarely, after warm-up)."""
    written: dict[str, float] = {}

    def one_input(data: bytes) -> None:
        try:
            check(data)
        finally:
            now = dataclasses.asdict(properties.COSTLIEST)
            now = {"cpu_s": round(now["cpu_s"], 3), "memory_mib": round(now["memory_mib"], 1)}
            if now != written:
                written.update(now)
                path.write_text(json.dumps(now) + "\n")

    return one_input


def backstop_flags(budget: properties.Budget) -> list[str]:
    """libFuzzer's own limits, a little above the harness's so the harness reports first.

    libFuzzer checks getrusage's peak RSS, which a child inherits from its parent's peak at
    fork (a pytest process that exported a model starts its children gigabytes "high"): the
    limit is set above that peak, not above the current RSS. The harness's own check is exact.
    """
    inherited_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    start_mib = max(properties.current_rss_mib(), inherited_mib)
    rss_mb = math.ceil(start_mib + budget.memory_mib + 256)
    return [f"-timeout={math.ceil(budget.cpu_s * 5)}", f"-rss_limit_mb={rss_mb}"]


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz.target {{{'|'.join(TARGETS)}}} [libFuzzer flags]")
    name = argv[1]
    checks: dict[str, tuple[Callable[[bytes], None], properties.Budget]] = {
        "image": (image_input, properties.IMAGE_BUDGET),
        "event": (event_input_check, properties.EVENT_BUDGET),
    }
    one_input, budget = checks[name]
    if costliest := os.environ.get("FUZZ_COSTLIEST_FILE"):
        one_input = recording_costliest(one_input, Path(costliest))
    given = {arg.split("=", 1)[0] for arg in argv[2:] if arg.startswith("-")}
    flags = [f for f in backstop_flags(budget) if f.split("=", 1)[0] not in given]
    # libFuzzer takes its flags from argv[0]'s position onwards; the target name is not one.
    atheris.Setup([argv[0], *flags, *argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
