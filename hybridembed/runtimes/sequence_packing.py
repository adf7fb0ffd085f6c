"""Sequence packing for the torch runtime: a batch of texts of mixed lengths runs as a few
rows holding several texts each, every text attending only to itself, instead of one row
per text padded to the longest.

Why: the server merges what concurrent clients send, so its batches mix lengths (twenty
texts of 25-54 tokens are ~40% padding when padded to the longest), and in the linear
layers, most of an encoder's work, a padded position costs as much as a real one. Packed,
texts sit end to end in rows (first-fit decreasing), each with its own position ids from
0 and a block-diagonal attention mask, so the encoder computes what it computes for each
text alone (the same block-diagonal packing as Krell et al., "Efficient Sequence Packing
without Cross-contamination", 2021, arXiv:2107.02027). The hidden states are scattered
back to the padded layout, so every head reads them unchanged.

A packed row is wider than most texts in it, so each position attends over more (masked)
positions: a batch is packed only when the estimated cost, linear plus attention work,
is at least :data:`MIN_SAVING` lower than padded. Length-sorted batches (large in-process
calls) have little padding and run as before. A text whose states are not finite would
spread NaN to the texts sharing its row (a masked score is NaN plus a large negative
number, a zero weight times NaN is NaN), so the runtime runs such a batch again padded,
where the engine names only the texts that failed.

Encoders: BERT-style absolute positions (``bert``; ``roberta`` / ``xlm-roberta``, whose
positions start after the padding id) with bidirectional SDPA or eager attention. Others
(rotary or sliding-window encoders, decoders) run padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Packing must save at least this share of the estimated work: building the mask and
# moving the states cost a little, and the estimate is only an estimate.
MIN_SAVING = 0.05
# Model types whose position ids may be given explicitly, with the first position's id.
_POSITION_START = {"bert": lambda config: 0,
                   "roberta": lambda config: config.pad_token_id + 1,
                   "xlm-roberta": lambda config: config.pad_token_id + 1}


@dataclass(frozen=True)
class PackPlan:
    """Where each real token of a right-padded ``(n, width_in)`` batch goes in ``rows``
    packed rows of ``width`` tokens. ``source`` / ``target``: int64 flat indexes of the
    real tokens in the padded and in the packed layout; ``positions`` / ``segments``:
    ``(rows, width)`` int64 position id (from 0) and text of each packed position (the
    empty tail of a row is a segment of its own, so it attends to itself and stays
    finite)."""

    rows: int
    width: int
    source: np.ndarray
    target: np.ndarray
    positions: np.ndarray
    segments: np.ndarray


def attention_span(config) -> float:
    """The row width at which a position's attention work equals its linear work, for
    :func:`plan`: per layer and position the linear layers cost ``2 * (4 h^2 + 2 h i)``
    FLOPs (Q, K, V, output; the feed-forward pair) and attention ``4 h w`` over ``w``
    positions, so the ratio is ``w / (2 h + i)``."""
    hidden = config.hidden_size
    return float(2 * hidden + getattr(config, "intermediate_size", 4 * hidden))


def plan(lengths: np.ndarray, span: float, max_width: int) -> PackPlan | None:
    """The packing of texts of ``lengths`` tokens (right-padded to the longest), or
    ``None`` when padded is as cheap. Row widths tried: the longest text, two to four
    times it while at most ``max_width`` (the encoder's position table); cost of a layout
    of ``r`` rows of ``w`` tokens: ``r w (1 + w / span)`` (see :func:`attention_span`)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n, longest = len(lengths), int(lengths.max(initial=0))
    if n < 2 or longest < 1:
        return None
    padded = n * longest * (1 + longest / span)
    if int(lengths.sum()) >= (1 - MIN_SAVING) * n * longest:
        return None  # too little padding for any layout to save enough
    order = np.argsort(-lengths, kind="stable")
    best = None
    for width in (w for w in (longest, 2 * longest, 3 * longest, 4 * longest) if w == longest
                  or w <= max_width):
        rows = _first_fit(lengths, order, width)
        cost = len(rows) * width * (1 + width / span)
        if best is None or cost < best[0]:
            best = (cost, width, rows)
    cost, width, rows = best
    if cost > (1 - MIN_SAVING) * padded:
        return None
    source, target, positions, segments = [], [], np.zeros((len(rows), width), np.int64), \
        np.full((len(rows), width), -1, np.int64)
    for r, texts in enumerate(rows):
        offset = 0
        for i in texts:
            k = int(lengths[i])
            source.append(i * longest + np.arange(k))
            target.append(r * width + offset + np.arange(k))
            positions[r, offset:offset + k] = np.arange(k)
            segments[r, offset:offset + k] = i
            offset += k
    segments[segments < 0] = n  # each row's empty tail: a segment of its own
    return PackPlan(len(rows), width, np.concatenate(source), np.concatenate(target),
                    positions, segments)


def _first_fit(lengths: np.ndarray, order: np.ndarray, width: int) -> list[list[int]]:
    """First-fit decreasing: each text, longest first, into the first row with room."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        k = int(lengths[i])
        for r, free in enumerate(room):
            if free >= k:
                rows[r].append(int(i))
                room[r] -= k
                break
        else:
            rows.append([int(i)])
            room.append(width - k)
    return rows


class Packer:
    """Runs a torch encoder on packed rows (see the module docs); :func:`for_encoder`
    says whether an encoder can be."""

    def __init__(self, encoder: torch.nn.Module, first_position: int):
        self.encoder = encoder
        self.first_position = first_position
        self.span = attention_span(encoder.config)
        # BERT reads token type ids from a buffer as long as its position table
        self.max_width = encoder.config.max_position_embeddings - first_position
        self.pad_id = getattr(encoder.config, "pad_token_id", None)

    @classmethod
    def for_encoder(cls, encoder: torch.nn.Module) -> Packer | None:
        """A packer for ``encoder``, or ``None`` for encoders whose positions or attention
        packing would change (only BERT-style absolute positions, bidirectional)."""
        config = getattr(encoder, "config", None)
        start = _POSITION_START.get(getattr(config, "model_type", None))
        if (start is None or getattr(config, "is_decoder", False)
                or getattr(config, "_attn_implementation", None) not in ("sdpa", "eager")
                or getattr(config, "position_embedding_type", "absolute") != "absolute"):
            return None
        return cls(encoder, start(config))

    def plan(self, ids: np.ndarray, mask: np.ndarray) -> PackPlan | None:
        """The plan for a right-padded batch's ``(n, width)`` ids and attention mask.
        ``None`` also when a text holds the padding id where positions count from it
        (RoBERTa's own position ids skip such a token; packed, they would not)."""
        packed = plan(mask.sum(axis=1), self.span, self.max_width)
        if packed is not None and self.first_position and self.pad_id is not None and bool(
                (ids[mask.astype(bool)] == self.pad_id).any()):
            return None
        return packed

    def encode(self, ids: torch.Tensor, plan: PackPlan) -> torch.Tensor:
        """``(n, width, hidden)`` last hidden states of the right-padded ``ids`` computed
        packed; padding positions are zero."""
        n, longest = ids.shape
        device = ids.device
        source = torch.from_numpy(plan.source).to(device)
        target = torch.from_numpy(plan.target).to(device)
        packed = torch.zeros(plan.rows * plan.width, dtype=ids.dtype, device=device)
        packed[target] = ids.reshape(-1)[source]
        segments = torch.from_numpy(plan.segments).to(device)
        dtype = next(self.encoder.parameters()).dtype
        blocked = segments.unsqueeze(2) != segments.unsqueeze(1)  # (rows, width, width)
        mask = torch.zeros(blocked.shape, dtype=dtype, device=device).masked_fill_(
            blocked, torch.finfo(dtype).min).unsqueeze(1)
        positions = torch.from_numpy(plan.positions).to(device) + self.first_position
        states = self.encoder(input_ids=packed.view(plan.rows, plan.width),
                              attention_mask=mask, position_ids=positions).last_hidden_state
        out = states.new_zeros(n * longest, states.shape[-1])
        out[source] = states.reshape(-1, states.shape[-1])[target]
        return out.view(n, longest, -1)
