"""Compute runtimes: run the encoder and its heads on padded token batches.

A runtime takes NumPy arrays in and gives NumPy ``float32`` arrays out; torch (or ONNX
Runtime) never leaks above this package.
"""

from .base import Runtime, RuntimeOutOfMemory, RuntimeOutput

RUNTIMES: tuple[str, ...] = ("torch", "onnx")


def load_runtime(name: str, spec, **options) -> Runtime:
    """Instantiate the runtime called ``name`` for ``spec``."""
    from ..errors import InvalidOptionError

    if name == "torch":
        from .torch_runtime import TorchRuntime

        return TorchRuntime(spec, **options)
    if name == "onnx":
        from .onnx_runtime import OnnxRuntime

        return OnnxRuntime(spec, **options)
    raise InvalidOptionError(f"unknown runtime {name!r}; valid: {', '.join(RUNTIMES)}", "runtime")


def serving_options(name: str) -> dict:
    """The options the server gives runtime ``name`` (``SERVING_OPTIONS`` of its module:
    what differs from an in-process caller's defaults, and why, is said there); ``{}``
    for a runtime that needs none."""
    if name == "onnx":
        from .onnx_runtime import SERVING_OPTIONS

        return dict(SERVING_OPTIONS)
    return {}


__all__ = ["RUNTIMES", "Runtime", "RuntimeOutOfMemory", "RuntimeOutput", "load_runtime",
           "serving_options"]
