"""python -m model_export: see `python -m model_export --help` and docs/export.md."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import ExportError

# The repository's build/model, wherever the command is run from (same as export_model's).
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "build" / "model"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_export",
        description=(
            "Export ResNet18 to a verified, self-contained ONNX file (model.onnx) with a "
            "manifest.json; optionally quantize to INT8 and publish to S3."
        ),
        epilog="Details: docs/export.md",
    )
    parser.add_argument(
        "--weights",
        default="auto",
        metavar="imagenet|random|auto|PATH",
        help="imagenet: torchvision IMAGENET1K_V1 (needs the network once, then cached in "
        "$TORCH_HOME); random: seeded UNTRAINED model for tests; auto: imagenet if it can be "
        "fetched, else random (says so); PATH: a local checkpoint (state_dict or a saved "
        "torchvision ResNet18). Default: auto",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="class names, one per line; the count must match the model's head",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help="where model.onnx and manifest.json go. Default: build/model in the repository",
    )
    parser.add_argument("--quantize", choices=("none", "int8"), default="none")
    parser.add_argument(
        "--calibration-dir",
        type=Path,
        metavar="DIR",
        help="images (searched recursively) to calibrate INT8 with; without it the shipped "
        "photographs are used, and the report says so",
    )
    parser.add_argument(
        "--calibration-limit",
        type=int,
        default=256,
        metavar="N",
        help="use at most N calibration images (sorted by path). Default: 256",
    )
    parser.add_argument(
        "--int8-activations",
        choices=("uint8", "int8"),
        help="INT8 activation type: uint8 = U8S8 (ONNX Runtime's CPU recommendation; fastest on "
        "x86 VNNI), int8 = S8S8 (symmetric, as GPU/TensorRT want). Weights are always int8. "
        "Default: uint8",
    )
    parser.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        help="quantize weights to 7 bits so U8S8 cannot saturate on x86 CPUs without VNNI "
        "(AVX2 only, reportedly Lambda's x86_64); no speed cost. --no-reduce-range keeps 8-bit "
        "weights when every target CPU has VNNI or is arm64. Default: on",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for --weights random/auto. Default: 0"
    )
    parser.add_argument(
        "--upload",
        metavar="s3://BUCKET/PREFIX",
        help="publish model.onnx and manifest.json to PREFIX/<sha256>/ (PREFIX defaults to "
        "'models') and verify them; honours AWS_ENDPOINT_URL_S3",
    )
    parser.add_argument(
        "--publish-only",
        action="store_true",
        help="skip the export and publish the artifact already in --out (needs --upload)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the manifest as JSON instead of the report"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.publish_only:
        if not args.upload:
            raise ExportError("--publish-only needs --upload s3://bucket/prefix")
    else:
        from .export import export_model
        from .report import format_report

        weights: str | Path = args.weights
        if args.weights not in ("imagenet", "random", "auto"):
            weights = Path(args.weights)
        manifest = export_model(
            weights,
            args.out,
            args.quantize,
            labels=args.labels,
            calibration_dir=args.calibration_dir,
            calibration_limit=args.calibration_limit,
            seed=args.seed,
            int8_activations=args.int8_activations,
            reduce_range=args.reduce_range,
        )
        if args.json:
            print(json.dumps(manifest, indent=2, ensure_ascii=False))
        else:
            print(format_report(manifest, str(args.out / manifest["file"])))
    if args.upload:
        from .publishing import publish

        print(f"publishing to {args.upload} ...", file=sys.stderr, flush=True)
        bucket, key = publish(args.out, args.upload)
        print(f"published s3://{bucket}/{key}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.upload:
        # A malformed URL must fail before a minute of exporting, not after.
        from .publishing import parse_s3_url

        try:
            parse_s3_url(args.upload)
        except ExportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    try:
        _run(args)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; the output directory was left as it was", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        detail = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"error: internal error ({type(exc).__name__}: {detail}); "
            "re-run with --debug for the traceback",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
