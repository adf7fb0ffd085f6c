"""Sequence packing for the torch runtime: a mixed-length batch runs its linear layers on
the real tokens only, packed end to end, instead of one row per text padded to the longest.

Why: the server merges what concurrent clients send, so its batches mix lengths (twenty
texts of 25-54 tokens are ~30% padding when padded to the longest), and in the linear
layers, most of an encoder's work, a padded position costs as much as a real one.

How (the "unpadding" of FlashAttention's varlen kernels and ModernBERT, here on a CPU):
the real tokens of the batch form one ``(tokens, hidden)`` stream; embeddings, the Q/K/V
and output projections, the feed-forward pair and the layer norms act on it token by
token. Only attention needs each text's own tokens together: Q, K and V are scattered to
the padded ``(texts, heads, longest, head_dim)`` layout for one SDPA call with a key
padding mask, and the context gathered back. Each text attends only to itself, exactly as
padded, so the outputs equal the padded ones, and a text whose states are not finite
cannot touch the others. The hidden states are scattered back to the padded layout at the
end, so every head reads them unchanged. Attention still spends ``longest^2`` per text,
a small share of the work for texts of similar lengths; the engine keeps a batch's padded
size within a few times its token budget (``RAGGED_MAX_PADDED``), so a long text beside
many short ones does not make it large.

An earlier version packed several texts into rows of 2-4x the longest text with a
block-diagonal mask (Krell et al., arXiv:2107.02027); each position then attended over
the whole row, which cost more than the FLOP count said on a CPU (12 heads of 32 dims):
random 20-text batches ran 13% slower than length-sorted ones, unpadded they run as fast
(docs/BENCHMARKS.md).

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

# Unpadding must remove at least this share of a batch's positions: the scatters and
# gathers around attention cost a little, and length-sorted batches have next to no
# padding.
MIN_SAVING = 0.05
# Model types whose layers have the BERT layout; value: whether positions count from the
# padding id (RoBERTa) rather than from 0 (BERT).
_POSITIONS_FROM_PADDING = {"bert": False, "roberta": True, "xlm-roberta": True}


@dataclass(frozen=True)
class PackPlan:
    """The real tokens of a right-padded ``(n, longest)`` batch: ``source``, int64 flat
    indexes of the real tokens in the padded layout, in order (text by text)."""

    n: int
    longest: int
    source: np.ndarray


def plan(mask: np.ndarray) -> PackPlan | None:
    """The plan for a right-padded batch's ``(n, longest)`` attention mask, or ``None``
    when its padding is under :data:`MIN_SAVING` of its positions (or a text is empty)."""
    mask = np.asarray(mask)
    n, longest = mask.shape if mask.ndim == 2 else (0, 0)
    lengths = mask.sum(axis=1) if n else np.zeros(0)
    if n < 2 or not lengths.all() or lengths.sum() > (1 - MIN_SAVING) * n * longest:
        return None
    return PackPlan(n, longest, np.flatnonzero(mask.reshape(-1)))


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
        keys = torch.zeros(n * longest, dtype=torch.bool, device=ids.device)
        keys[source] = True
        keys = keys.view(n, 1, 1, longest)  # each text attends to its own real tokens
        for layer in self.layers:
            attention = layer.attention
            qkv = x.new_zeros(3, n * longest, hidden)
            qkv[0, source] = attention.self.query(x)
            qkv[1, source] = attention.self.key(x)
            qkv[2, source] = attention.self.value(x)
            q, k, v = qkv.view(3, n, longest, heads, hidden // heads).transpose(2, 3)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
            context = context.transpose(1, 2).reshape(n * longest, hidden)[source]
            x = attention.output.LayerNorm(attention.output.dense(context) + x)
            x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
        out = x.new_zeros(n * longest, hidden)
        out[source] = x
        return out.view(n, longest, hidden)
