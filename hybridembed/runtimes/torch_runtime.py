"""The PyTorch runtime: loads the checkpoint in process (SDPA attention, fp32 on CPU,
bf16/fp16 on GPU) and runs :class:`EncoderWithHeads` under ``inference_mode``."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import InvalidOptionError
from ..registry import ModelSpec
from .base import RuntimeOutOfMemory, RuntimeOutput, keep_heaviest
from .late_interaction import LateInteractionTokens
from .openmp import torch_call
from .prepacked import prepack_linears
from .sequence_packing import Packer
from .sequence_packing import plan as packing_plan
from .torch_model import build_module

log = logging.getLogger(__name__)

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16,
                                  "bf16": torch.bfloat16}


def pick_device(device: str) -> str:
    base = device.split(":", 1)[0]
    if base not in DEVICES:
        raise InvalidOptionError(f"unknown device {device!r}; valid: {', '.join(DEVICES)} "
                                 "(optionally cuda:N)", "device")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if base == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionError("device 'cuda' asked for but torch sees no CUDA GPU; use "
                                 "device='auto' or 'cpu'", "device")
    return device


def pick_dtype(dtype: str | None, device: str) -> str:
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp16" if device == "mps" else "fp32"
    if dtype not in DTYPES:
        raise InvalidOptionError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(DTYPES)}",
                                 "dtype")
    return dtype


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                               or "not enough memory" in text)


def _from_pretrained(auto_model, path, kwargs, **extra):
    try:
        return auto_model.from_pretrained(path, **kwargs, **extra)
    except ValueError as exc:
        if "scaled_dot_product_attention" not in str(exc):
            raise
        return auto_model.from_pretrained(path, **{**kwargs, "attn_implementation": None}, **extra)


def _load_encoder(auto_model, spec: ModelSpec, torch_dtype: torch.dtype):
    """The bare encoder with SDPA attention (the architecture's own attention where it has
    no SDPA, as MPNet). BERT-family classes also build a pooler head that embeddings never
    use; it is left out, and its weights' absence or presence is not worth a warning. Any
    other missing weight is."""
    from transformers.utils import logging as hf_logging

    kwargs = {"attn_implementation": "sdpa", "dtype": torch_dtype, "output_loading_info": True}
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        try:
            encoder, info = _from_pretrained(auto_model, spec.path, kwargs, add_pooling_layer=False)
        except TypeError:
            encoder, info = _from_pretrained(auto_model, spec.path, kwargs)
    finally:
        hf_logging.set_verbosity(level)
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("pooler.")
               and not k.startswith("cls.predictions.decoder")]
    if missing:
        log.warning("%s: %d encoder weights missing from the checkpoint and randomly "
                    "initialised (first: %s); embeddings will be meaningless",
                    spec.name, len(missing), ", ".join(sorted(missing)[:3]))
    return encoder


class TorchRuntime:
    token_states = True  # forward(states=True) returns the last hidden states too

    def __init__(self, spec: ModelSpec, device: str = "auto", dtype: str | None = None,
                 threads: int | None = None, sequence_packing: bool = True,
                 prepacked_weights: bool = False, torchscript: bool = True):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        if threads:
            torch.set_num_threads(int(threads))
        self.threads = torch.get_num_threads()
        # On a multi-core CPU the engine runs one batch per core, side by side (see the
        # encoder); an accelerator takes one batch at a time.
        self.parallel_forwards = self.threads if self.device == "cpu" else 1
        self.module = build_module(spec, DTYPES[self.dtype], _load_encoder)
        self.module.to(self.device).eval()
        # opt-in: fp32 on a CPU (prepack_linears takes no other layer), the encoder's
        # weights laid out once for oneDNN instead of by MKL on every call; not faster
        # here (see runtimes/prepacked.py)
        if prepacked_weights:
            prepack_linears(self.module.encoder)
        self.splade = spec.splade is not None
        self.max_active_dims = spec.max_active_dims
        self.late = (LateInteractionTokens(spec.late_interaction, spec.path)
                     if spec.late_interaction is not None else None)
        self.left_pad = spec.padding_side == "left"
        # Batches run unpadded on a CPU (see runtimes/sequence_packing.py), so the engine
        # budgets a batch by its real tokens, not by its longest text. Not for
        # left-padded decoders, nor for ColBERT checkpoints, whose token plan (markers,
        # query expansion) reshapes every batch first.
        self.packer = (Packer.for_encoder(self.module.encoder, torchscript)
                       if sequence_packing and self.device == "cpu" and not self.left_pad
                       and self.late is None else None)
        self.packs_ragged = self.packer is not None

    def _encode_left_padded(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states of a right-padded batch computed left-padded, as the model's
        tokenizer pads (decoders such as Qwen3-Embedding, whose reference runs them so),
        and handed back right-aligned so every head and row slice reads them as usual:
        row ``r`` is rotated right by its padding, run, and rotated back."""
        width = ids.shape[1]
        pad = width - mask.sum(dim=1, keepdim=True)  # (batch, 1) padding per row
        cols = torch.arange(width, device=ids.device).unsqueeze(0)
        to_left = (cols - pad) % width  # left[r, j] = right[r, (j - pad_r) mod width]
        hidden = self.module.encode(ids.gather(1, to_left), mask.gather(1, to_left))
        back = ((cols + pad) % width).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, back)

    def pooled_head(self, pooled: np.ndarray) -> np.ndarray:
        """``(n, hidden)`` float32 pooled states through the pipeline's Dense modules (if
        any): ``(n, dim)`` float32, not normalised. Late chunking pools each chunk's span
        of token states itself, then calls this, so a chunk's dense vector goes through
        the same head as a whole text's."""
        if self.module.dense_layers is None:
            return pooled
        return self._on_compute_thread(self._pooled_head, pooled)

    def _pooled_head(self, pooled: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pooled)).to(self.device,
                                                                   DTYPES[self.dtype])
            return self.module.dense_head(x).float().cpu().numpy()

    def _on_compute_thread(self, fn, *args, threads: int | None = None):
        """``fn(*args)`` with ``threads`` compute threads (default: the runtime's); on a
        CPU on the process's one threaded-compute thread when more than one (see
        :mod:`.openmp`)."""
        if self.device != "cpu":
            return fn(*args)
        return torch_call(threads or self.threads, fn, *args)

    def span_sparse(self, states: np.ndarray) -> np.ndarray:
        """SPLADE weight of every vocabulary id for one span of token states (``(n,
        hidden)`` float32): the MLM head and SPLADE pooling over those positions only —
        what a whole text gets over all of its own — as ``(vocab,)`` float32, pruned to
        ``max_active_dims`` as :meth:`forward` prunes. Late chunking's learned sparse
        vector of a chunk, for SPLADE models."""
        return self._on_compute_thread(self._span_sparse, states)

    def _span_sparse(self, states: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            hidden = torch.from_numpy(np.ascontiguousarray(states)).to(
                self.device, DTYPES[self.dtype]).unsqueeze(0)
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=self.device)
            weights = self.module.splade(hidden, mask).float().cpu().numpy()
        if self.max_active_dims:
            weights = keep_heaviest(weights, self.max_active_dims)
        return weights[0]

    def _vectors_to_host(self, vectors: torch.Tensor) -> np.ndarray:
        """Per-token vectors (unit length, float32) to host memory: the largest output by
        far (4 KB per token at BGE-M3's size). A half-precision model sends them as
        float16 (11 significant bits, more than the 8 of the bf16 states they came from;
        the encoder widens them back to float32 off the forward thread), and on CUDA
        through pinned memory: measured on an H100, a plain ``.cpu()`` of float32 vectors
        moved 1.2 GB/s and took two thirds of the call's time."""
        if self.dtype != "fp32":
            vectors = vectors.to(torch.float16)
        if not self.device.startswith("cuda"):
            return vectors.cpu().numpy()
        host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
        host.copy_(vectors)  # PyTorch caches pinned blocks, so this buffer is reused
        return host.numpy()

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, *, dense: bool,
                sparse: bool, multivector: bool, threads: int | None = None,
                query: bool = False, states: bool = False) -> RuntimeOutput:
        """One batch (of queries with ``query``: ColBERT query expansion); on a CPU with
        ``threads`` compute threads (default: the runtime's), on the process's one
        threaded-compute thread when more than one (see :mod:`.openmp`). With ``states``,
        the last hidden states too (late chunking pools spans of them)."""
        return self._on_compute_thread(self._forward, input_ids, attention_mask, dense, sparse,
                                       multivector, query, states, threads=threads)

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, dense: bool,
                 sparse: bool, multivector: bool, query: bool = False,
                 states: bool = False) -> RuntimeOutput:
        plan = self.late.plan(input_ids, attention_mask, query) if self.late else None
        if plan is not None:
            input_ids, attention_mask = plan.input_ids, plan.attention_mask
        try:
            with torch.inference_mode():
                ids = torch.from_numpy(input_ids).to(self.device, non_blocking=True)
                mask = torch.from_numpy(attention_mask).to(self.device, non_blocking=True)
                packed = packing_plan(attention_mask) if self.packer is not None else None
                if self.left_pad:
                    hidden = self._encode_left_padded(ids, mask)
                elif packed is not None:
                    hidden = self.packer.encode(ids, packed)
                else:
                    hidden = self.module.encode(ids, mask)
                pooled, weights, vectors = self.module.heads(hidden, mask, dense, sparse,
                                                             multivector)
                weights = None if weights is None else weights.float().cpu().numpy()
                if weights is not None and self.splade and self.max_active_dims:
                    weights = keep_heaviest(weights, self.max_active_dims)
                return RuntimeOutput(
                    token_states=hidden.float().cpu().numpy() if states else None,
                    dense=None if pooled is None else pooled.float().cpu().numpy(),
                    token_weights=None if self.splade else weights,
                    vocab_weights=weights if self.splade else None,
                    token_vectors=None if vectors is None else self._vectors_to_host(vectors),
                    token_mask=None if plan is None or vectors is None else plan.keep,
                    positions=None if packed is None else len(packed.source),
                )
        except Exception as exc:
            if _is_oom(exc):
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                raise RuntimeOutOfMemory(str(exc)) from exc
            raise
