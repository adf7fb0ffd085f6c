"""Linear layers with their weights laid out once for oneDNN, for fp32 encoders on a CPU.

Why: ``nn.Linear`` on torch's CPU wheels calls MKL's ``sgemm``, which lays the weight
matrix out for its kernel again on every call. An encoder's weights do not fit in a CPU's
caches (MiniLM-L6's layers are 42 MB), so every batch reads each weight from memory and
then again to lay it out; a short batch (one query of ~20 tokens) is bound by that memory
traffic, not by arithmetic. oneDNN's inner product takes a weight laid out ahead of time
(``torch.ops.mkldnn._reorder_linear_weight``, what TorchInductor's freezing uses on a
CPU), so each call reads it once. Off by default (``prepacked_weights=True`` in a torch
runtime's options, or a reranker's argument, turns it on): with one OpenMP team it was
not faster on the machines measured (docs/BENCHMARKS.md, sessions 9 and 11). A torch
runtime's packed layer stack runs eagerly with it (:mod:`.sequence_packing`).

:func:`prepack_linears` swaps every ``nn.Linear`` under a module for a
:class:`PrepackedLinear` holding only the laid-out weight (the plain one is freed). These
are private torch operators: when they are missing or do not reproduce ``F.linear`` on a
probe, nothing is swapped and the model runs as loaded. A swapped model's weights are
opaque oneDNN tensors: it cannot be deep-copied, moved to another dtype or device, or
saved through ``state_dict`` (nothing in the package does these to a loaded model).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .openmp import torch_call

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether this torch build has oneDNN's prepacked linear operators and oneDNN is
    on (``torch.backends.mkldnn.enabled``)."""
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and ops is not None and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise"))


class PrepackedLinear(torch.nn.Module):
    """``F.linear(x, weight, bias)`` for ``x`` of shape ``(..., in_features)`` (float32,
    CPU), with ``weight`` laid out once for oneDNN; returns ``(..., out_features)``."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight, None),
                             persistent=False)
        bias = None if linear.bias is None else linear.bias.detach()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)


def prepack_linears(module: torch.nn.Module) -> int:
    """Swap every float32 ``nn.Linear`` under ``module`` (on the CPU) for a
    :class:`PrepackedLinear`, after checking one against ``F.linear`` on a probe; returns
    how many were swapped (0 when the operators are missing or disagree). Each plain
    weight is freed as its layer is swapped, so loading never holds two copies of more
    than one layer's weight. An operator failing part way leaves the layers not yet
    swapped as loaded (outputs are the same either way), and says so.

    The reorders and the probe run on the process's one threaded-compute thread
    (:func:`~hybridembed.runtimes.openmp.torch_call`): run with several threads on the
    loading thread, they would leave it an OpenMP team of its own, and two teams on a
    machine of as many cores make every worker sleep between a forward pass's parallel
    regions (a lone text took twice as long, docs/BENCHMARKS.md, session 11)."""
    if not available():
        return 0
    return torch_call(torch.get_num_threads(), _prepack, module)


def _prepack(module: torch.nn.Module) -> int:
    # (parent, name) only: a list holding the layers would keep every plain weight alive
    # until the last one is swapped
    targets = [(parent, name) for parent in module.modules()
               for name, child in parent.named_children()
               if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32
               and child.weight.device.type == "cpu"]
    swapped = 0
    try:
        with torch.inference_mode():
            if targets and not _agrees(getattr(*targets[0])):
                log.warning("oneDNN's prepacked linear disagrees with F.linear here; "
                            "running the model's linear layers as loaded")
                return 0
            for parent, name in targets:
                setattr(parent, name, PrepackedLinear(getattr(parent, name)))
                swapped += 1
    except RuntimeError as exc:  # an operator this build or CPU does not support
        log.warning("oneDNN's prepacked linear failed (%s) after %d of %d linear layers; "
                    "the rest run as loaded", exc, swapped, len(targets))
    return swapped


def _agrees(linear: torch.nn.Linear) -> bool:
    """Whether a :class:`PrepackedLinear` of ``linear`` computes ``F.linear`` on a probe."""
    probe = torch.randn(3, 5, linear.in_features, generator=torch.Generator().manual_seed(0))
    return torch.allclose(PrepackedLinear(linear)(probe),
                          F.linear(probe, linear.weight, linear.bias), rtol=1e-4, atol=1e-4)
