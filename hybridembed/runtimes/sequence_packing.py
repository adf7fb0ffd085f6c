"""Sequence packing for the torch runtime: a batch runs its linear layers on the real
tokens only, packed end to end, instead of one row per text padded to the longest.

Why: the server merges what concurrent clients send, so its batches mix lengths (twenty
texts of 25-54 tokens are ~30% padding when padded to the longest), and in the linear
layers, most of an encoder's work, a padded position costs as much as a real one.

How (the "unpadding" of FlashAttention's varlen kernels and ModernBERT, here on a CPU):
the real tokens of the batch form one ``(tokens, hidden)`` stream; embeddings, the Q/K/V
and output projections, the feed-forward pair and the layer norms act on it token by
token. Only attention needs each text's own tokens together: the engine's batches are
length-sorted, so texts of equal length lie side by side in the stream, and each *run* of
them is one ``(texts, heads, length, head_dim)`` view of Q, K and V for one SDPA call
with no mask. Each text attends only to itself over exactly its own tokens, so outputs
equal the padded ones, a text whose states are not finite cannot touch the others, and
attention costs ``sum(length^2)``, not ``texts x longest^2``. With no mask PyTorch takes
its fused CPU attention kernel and nothing is scattered to a padded layout until the
hidden states at the end (so every head reads them unchanged). That is faster than the
Hugging Face module even on a batch with no padding at all, or one text (its mask
handling and per-module dispatch cost more than the runs' extra calls), so every batch
of a packing encoder runs here (docs/BENCHMARKS.md, session 9).

Earlier versions, measured against this one (docs/BENCHMARKS.md): rows of 2-4x the
longest text under a block-diagonal mask (Krell et al., arXiv:2107.02027) cost more than
the FLOP count said on a CPU (12 heads of 32 dims); scattering Q/K/V to the padded layout
for one masked SDPA call per layer paid for the scatters, the mask and ``longest^2`` per
text, and did not pay off on batches with under 5% padding.

The layer stack runs as one TorchScript call (:class:`PackedLayers`, scripted at load):
torch releases the GIL for each operator called from Python and takes it back after,
so an eager forward pass of a batch takes the GIL some thousand times (every run's
views and attention call in every layer), and waits each time while another thread
runs Python: the server's event loop parsing requests, or the other lane's forward
pass. A scripted stack is one call that releases the GIL once (measurements in
docs/BENCHMARKS.md, session 12). ``torch.jit.script`` is deprecated in torch 2.x without
a replacement that runs without a compiler (``torch.compile`` and AOTInductor need one at
run time), so the same module runs eagerly, with the same outputs, when scripting fails
or is turned off (``torchscript=False``), when an activation has no exact ``torch.nn``
equivalent (its own module then runs), and with prepacked weights (:mod:`.prepacked`,
opt-in), whose operator call TorchScript cannot compile.

Encoders: the BERT layer layout (``bert``; ``roberta`` / ``xlm-roberta``, whose positions
count from the padding id as HF's ``create_position_ids_from_input_ids`` counts them) with
absolute positions, bidirectional, no feed-forward chunking. Others (rotary or
sliding-window encoders, decoders) run padded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .openmp import torch_call
from .prepacked import PrepackedLinear

log = logging.getLogger(__name__)

# Model types whose layers have the BERT layout; value: whether positions count from the
# padding id (RoBERTa) rather than from 0 (BERT).
_POSITIONS_FROM_PADDING = {"bert": False, "roberta": True, "xlm-roberta": True}


@dataclass(frozen=True)
class PackPlan:
    """The real tokens of a right-padded ``(n, longest)`` batch: ``source``, int64 flat
    indexes of the real tokens in the padded layout, in order (text by text); ``runs``,
    ``(start, stop, texts, length)`` for each run of consecutive texts of one length, in
    token positions of the packed stream (``stop - start == texts * length``)."""

    n: int
    longest: int
    source: np.ndarray
    runs: tuple[tuple[int, int, int, int], ...]


def plan(mask: np.ndarray) -> PackPlan | None:
    """The plan for a right-padded batch's ``(n, longest)`` attention mask, or ``None``
    for an empty batch or one with an empty text (it would attend to nothing)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] == 0:
        return None
    n, longest = mask.shape
    lengths = mask.sum(axis=1)
    if not lengths.all():
        return None
    starts = np.flatnonzero(np.diff(lengths, prepend=-1))  # first text of each run
    texts = np.diff(starts, append=n)
    offsets = np.concatenate(([0], np.cumsum(lengths)))[starts]
    runs = tuple((int(a), int(a + t * length), int(t), int(length))
                 for a, t, length in zip(offsets, texts, lengths[starts], strict=True))
    return PackPlan(n, longest, np.flatnonzero(mask.reshape(-1)), runs)


def _bert_layout(encoder: torch.nn.Module) -> bool:
    config = encoder.config
    try:
        layers = list(encoder.encoder.layer)
        for layer in layers:
            _ = (layer.attention.self.query, layer.attention.self.key,
                 layer.attention.self.value, layer.attention.output.dense,
                 layer.attention.output.LayerNorm, layer.intermediate.dense,
                 layer.intermediate.intermediate_act_fn, layer.output.dense,
                 layer.output.LayerNorm)
        _ = encoder.embeddings
    except AttributeError:
        return False
    return bool(layers) and config.hidden_size % config.num_attention_heads == 0 and not (
        getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False)
        or getattr(config, "chunk_size_feed_forward", 0)
        or getattr(config, "position_embedding_type", "absolute") != "absolute")


class Packer:
    """Runs a BERT-layout torch encoder on the real tokens of a padded batch, as
    :func:`plan` lays them out (see the module docs); :func:`for_encoder` says whether an
    encoder can be."""

    def __init__(self, encoder: torch.nn.Module, from_padding: bool,
                 torchscript: bool = True):
        self.encoder = encoder
        config = encoder.config
        self.hidden = config.hidden_size
        self.pad_id = config.pad_token_id if from_padding else None
        # On the one threaded-compute thread (the activation probes are torch calls): a
        # torch call on the loading thread leaves it an OpenMP team of its own, and two
        # teams make every forward pass slower (runtimes/openmp.py)
        self.stack, self.scripted = torch_call(
            torch.get_num_threads(), _stack, list(encoder.encoder.layer),
            config.num_attention_heads, config.hidden_size, torchscript)

    @classmethod
    def for_encoder(cls, encoder: torch.nn.Module, torchscript: bool = True
                    ) -> Packer | None:
        """A packer for ``encoder``, or ``None`` for encoders whose layers are not the
        BERT layout with absolute positions, bidirectional. ``torchscript``: run the
        layer stack as TorchScript where it scripts (see the module docs)."""
        config = getattr(encoder, "config", None)
        from_padding = _POSITIONS_FROM_PADDING.get(getattr(config, "model_type", None))
        if from_padding is None or not _bert_layout(encoder):
            return None
        if from_padding and getattr(config, "pad_token_id", None) is None:
            return None
        return cls(encoder, from_padding, torchscript)

    def _positions(self, ids: torch.Tensor) -> torch.Tensor:
        """``(n, longest)`` position ids as the model's own embeddings compute them."""
        n, longest = ids.shape
        if self.pad_id is None:
            return torch.arange(longest, device=ids.device).expand(n, longest)
        # RoBERTa: real tokens count from padding_idx + 1, a padding id stays at
        # padding_idx wherever it stands (HF create_position_ids_from_input_ids)
        real = ids.ne(self.pad_id).long()
        return torch.cumsum(real, dim=1) * real + self.pad_id

    def encode(self, ids: torch.Tensor, plan: PackPlan) -> torch.Tensor:
        """``(n, longest, hidden)`` last hidden states of the right-padded ``ids``
        (int64), computed on the real tokens only; padding positions are zero."""
        n, longest, hidden = plan.n, plan.longest, self.hidden
        source = torch.from_numpy(plan.source).to(ids.device)
        tokens = ids.reshape(-1)[source].unsqueeze(0)
        positions = self._positions(ids).reshape(-1)[source].unsqueeze(0)
        x = self.encoder.embeddings(input_ids=tokens, position_ids=positions,
                                    token_type_ids=torch.zeros_like(tokens))[0]
        stack = self.stack if self.scripted is None else self.scripted
        x = stack(x, list(plan.runs))
        if len(plan.source) == n * longest:  # no padding: the stream is the layout
            return x.view(n, longest, hidden)
        out = x.new_zeros(n * longest, hidden)
        out[source] = x
        return out.view(n, longest, hidden)


class PackedLayer(torch.nn.Module):
    """One BERT-layout layer on a packed ``(tokens, hidden)`` stream: the layer's own
    submodules (shared, not copied), attention per run of equal-length texts."""

    def __init__(self, layer: torch.nn.Module, heads: int, hidden: int,
                 act: torch.nn.Module):
        super().__init__()
        self.heads, self.hidden = heads, hidden
        attention = layer.attention
        self.query, self.key, self.value = (attention.self.query, attention.self.key,
                                            attention.self.value)
        self.out, self.norm1 = attention.output.dense, attention.output.LayerNorm
        self.up, self.act = layer.intermediate.dense, act
        self.down, self.norm2 = layer.output.dense, layer.output.LayerNorm

    def forward(self, x: torch.Tensor, runs: list[tuple[int, int, int, int]]
                ) -> torch.Tensor:
        """``x``: ``(tokens, hidden)``; ``runs``: :attr:`PackPlan.runs`; returns the
        layer's output, same shape and dtype."""
        heads, hidden = self.heads, self.hidden
        per_head = hidden // heads
        q, k, v = self.query(x), self.key(x), self.value(x)
        context: list[torch.Tensor] = []
        for a, b, texts, length in runs:
            context.append(F.scaled_dot_product_attention(
                q[a:b].view(texts, length, heads, per_head).transpose(1, 2),
                k[a:b].view(texts, length, heads, per_head).transpose(1, 2),
                v[a:b].view(texts, length, heads, per_head).transpose(1, 2),
            ).transpose(1, 2).reshape(b - a, hidden))
        attended = context[0] if len(context) == 1 else torch.cat(context)
        x = self.norm1(self.out(attended) + x)
        return self.norm2(self.down(self.act(self.up(x))) + x)


class PackedLayers(torch.nn.Module):
    """A BERT-layout encoder's layer stack on a packed stream (see :class:`PackedLayer`).
    Each layer's activation is the model's own, or the ``torch.nn`` module that computes
    exactly the same values (checked on a probe; HF's activations are not scriptable):
    :attr:`scriptable` says whether every one has such a stand-in."""

    def __init__(self, layers: list[torch.nn.Module], heads: int, hidden: int):
        super().__init__()
        acts = [_scriptable_activation(layer.intermediate.intermediate_act_fn,
                                       layer.output.LayerNorm.weight)
                for layer in layers]
        self.hidden = hidden
        self.scriptable = all(act is not None for act in acts)
        self.layers = torch.nn.ModuleList(
            PackedLayer(layer, heads, hidden,
                        act if self.scriptable else layer.intermediate.intermediate_act_fn)
            for layer, act in zip(layers, acts, strict=True))

    def forward(self, x: torch.Tensor, runs: list[tuple[int, int, int, int]]
                ) -> torch.Tensor:
        """``x``: ``(tokens, hidden)`` embeddings of the packed stream; returns the last
        hidden states, same shape and dtype."""
        for layer in self.layers:
            x = layer(x, runs)
        return x


# torch.nn activations a Hugging Face activation may compute exactly (HF's "gelu" calls
# F.gelu, "gelu_pytorch_tanh" F.gelu(approximate="tanh"), "relu" F.relu, "silu" F.silu)
_STAND_INS = (lambda: torch.nn.GELU(), lambda: torch.nn.GELU(approximate="tanh"),
              lambda: torch.nn.ReLU(), lambda: torch.nn.SiLU())


# The probe spans the values a layer's pre-activations take and far beyond: a clipped
# activation (HF's "gelu_10") equals GELU up to its clip
_PROBE = torch.cat([torch.linspace(-8, 8, 257),
                    torch.tensor([-1e4, -1e3, -100.0, -50.0, -20.0, -11.0,
                                  11.0, 20.0, 50.0, 100.0, 1e3, 1e4])])


def _scriptable_activation(act, weight: torch.Tensor) -> torch.nn.Module | None:
    """A ``torch.nn`` activation that gives exactly what ``act`` gives on a probe from
    -1e4 to 1e4 (in ``weight``'s dtype and device), or ``None`` (also when ``act`` fails
    on it)."""
    probe = _PROBE.to(weight.device, weight.dtype)
    with torch.inference_mode():
        try:
            want = act(probe)
        except Exception:  # noqa: BLE001 - not an elementwise activation we can match
            return None
        for make in _STAND_INS:
            stand_in = make()
            if torch.equal(stand_in(probe), want):
                return stand_in
    return None


def _stack(layers: list[torch.nn.Module], heads: int, hidden: int, torchscript: bool
           ) -> tuple[PackedLayers, torch.jit.ScriptModule | None]:
    stack = PackedLayers(layers, heads, hidden)
    prepacked = any(isinstance(m, PrepackedLinear) for m in stack.modules())
    return stack, (_scripted(stack, layers[0].output.LayerNorm.weight)
                   if torchscript and not prepacked else None)


def _scripted(layers: PackedLayers, like: torch.Tensor) -> torch.jit.ScriptModule | None:
    """``layers`` compiled by ``torch.jit.script`` (sharing its weights) and run twice on
    a dummy in ``like``'s dtype and device, or ``None`` when it cannot be: an activation
    without a stand-in, a layer TorchScript cannot compile (a custom linear layer), or
    TorchScript turned off (``PYTORCH_JIT=0``); the eager module then runs instead."""
    if not layers.scriptable:
        return None
    try:
        scripted = torch.jit.script(layers)  # deprecated in torch 2.x: see the module docs
        if not isinstance(scripted, torch.jit.ScriptModule):  # PYTORCH_JIT=0
            return None
        # TorchScript profiles a module's first call and optimises its graph during the
        # second: both happen here, at load, not in the first requests (the Embedder's
        # warm-up is one call; docs/BENCHMARKS.md, session 12)
        dummy = torch.zeros(2, layers.hidden, dtype=like.dtype, device=like.device)
        with torch.inference_mode():
            for _ in range(2):
                scripted(dummy, [(0, 2, 1, 2)])
        return scripted
    except Exception as exc:  # noqa: BLE001 - any compile or run error: run eagerly
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()),
                      type(exc).__name__)
        log.warning("the packed layer stack runs eagerly (slower): TorchScript could not "
                    "compile or run it: %s", reason)
        return None
