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

Encoders: the BERT layer layout (``bert``; ``roberta`` / ``xlm-roberta``, whose positions
count from the padding id as HF's ``create_position_ids_from_input_ids`` counts them) with
absolute positions, bidirectional, no feed-forward chunking. Others (rotary or
sliding-window encoders, decoders) run padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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
                 layer.attention.output.LayerNorm, layer.intermediate, layer.output.dense,
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

    def __init__(self, encoder: torch.nn.Module, from_padding: bool):
        self.encoder = encoder
        config = encoder.config
        self.heads = config.num_attention_heads
        self.hidden = config.hidden_size
        self.pad_id = config.pad_token_id if from_padding else None
        self.layers = list(encoder.encoder.layer)

    @classmethod
    def for_encoder(cls, encoder: torch.nn.Module) -> Packer | None:
        """A packer for ``encoder``, or ``None`` for encoders whose layers are not the
        BERT layout with absolute positions, bidirectional."""
        config = getattr(encoder, "config", None)
        from_padding = _POSITIONS_FROM_PADDING.get(getattr(config, "model_type", None))
        if from_padding is None or not _bert_layout(encoder):
            return None
        if from_padding and getattr(config, "pad_token_id", None) is None:
            return None
        return cls(encoder, from_padding)

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
        n, longest, hidden, heads = plan.n, plan.longest, self.hidden, self.heads
        source = torch.from_numpy(plan.source).to(ids.device)
        tokens = ids.reshape(-1)[source].unsqueeze(0)
        positions = self._positions(ids).reshape(-1)[source].unsqueeze(0)
        x = self.encoder.embeddings(input_ids=tokens, position_ids=positions,
                                    token_type_ids=torch.zeros_like(tokens))[0]
        per_head = hidden // heads
        for layer in self.layers:
            attention = layer.attention
            q, k, v = attention.self.query(x), attention.self.key(x), attention.self.value(x)
            context = [F.scaled_dot_product_attention(
                *(t[a:b].view(texts, length, heads, per_head).transpose(1, 2)
                  for t in (q, k, v))).transpose(1, 2).reshape(b - a, hidden)
                for a, b, texts, length in plan.runs]
            context = context[0] if len(context) == 1 else torch.cat(context)
            x = attention.output.LayerNorm(attention.output.dense(context) + x)
            x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
        if len(plan.source) == n * longest:  # no padding: the stream is the layout
            return x.view(n, longest, hidden)
        out = x.new_zeros(n * longest, hidden)
        out[source] = x
        return out.view(n, longest, hidden)
