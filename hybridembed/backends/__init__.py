"""Compute backends: run the encoder and its heads on padded token batches.

A backend takes NumPy arrays in and gives NumPy ``float32`` arrays out; torch (or ONNX
Runtime) never leaks above this package.
"""

from .base import Backend, BackendOutOfMemory, BackendOutput

BACKENDS: tuple[str, ...] = ("torch",)


def load_backend(name: str, spec, **options) -> Backend:
    """Instantiate the backend called ``name`` for ``spec``."""
    from ..errors import InvalidOptionError

    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(spec, **options)
    raise InvalidOptionError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}", "backend")


__all__ = ["BACKENDS", "Backend", "BackendOutOfMemory", "BackendOutput", "load_backend"]
