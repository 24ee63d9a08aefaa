"""Export ResNet18 to a verified, self-contained ONNX artifact with a manifest; publish it to S3.

torch lives only in this package: neither the CDK app nor the Lambda image imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ExportError

if TYPE_CHECKING:
    from .export import export_model
    from .publishing import publish

__all__ = ["ExportError", "export_model", "publish"]


def __getattr__(name: str) -> Any:
    # Lazy: `import model_export.photos` (used by other areas' tests) must not pay for torch.
    # No submodule shares a name with these functions, so an import cannot shadow them.
    if name == "export_model":
        from .export import export_model

        return export_model
    if name == "publish":
        from .publishing import publish

        return publish
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
