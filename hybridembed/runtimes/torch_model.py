"""The encoder and its heads as one torch module: pooling, learned sparse weights and
ColBERT vectors computed from one pass over the last hidden states. The torch runtime
runs it; an ONNX export can trace the same module."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def load_linear_head(path, dtype: torch.dtype) -> nn.Linear:
    """A linear head saved as a state dict (BGE-M3's ``*_linear.pt``), loaded without
    executing any pickled code."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    weight = state["weight"]
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    layer.load_state_dict(state)
    return layer.to(dtype)


class EncoderWithHeads(nn.Module):
    def __init__(self, encoder: nn.Module, pooling: str, sparse_linear: nn.Linear | None,
                 colbert_linear: nn.Linear | None):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.sparse_linear = sparse_linear
        self.colbert_linear = colbert_linear

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "lasttoken":
            last = mask.sum(dim=1).long() - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * weights).sum(dim=1)
        return summed / weights.sum(dim=1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                dense: bool = True, sparse: bool = True, multivector: bool = True):
        hidden = self.encode(input_ids, attention_mask)
        return self.heads(hidden, attention_mask, dense, sparse, multivector)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(batch, length, hidden)`` last hidden states, the input of every head."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def heads(self, hidden: torch.Tensor, attention_mask: torch.Tensor, dense: bool = True,
              sparse: bool = True, multivector: bool = True):
        """``(pooled, sparse weights, ColBERT vectors)`` of the hidden states; ``None``
        for an output not asked for."""
        pooled = self.pool(hidden, attention_mask) if dense else None
        weights = None
        if sparse and self.sparse_linear is not None:
            weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1)
        vectors = None
        if multivector:
            after_cls = hidden[:, 1:]
            if self.colbert_linear is not None:
                after_cls = self.colbert_linear(after_cls)
            after_cls = after_cls * attention_mask[:, 1:].unsqueeze(-1).to(after_cls.dtype)
            vectors = F.normalize(after_cls.float(), dim=-1)
        return pooled, weights, vectors
