"""The encoder and its heads as one torch module: pooling (+ Dense modules), learned sparse
weights (BGE-M3's linear head or SPLADE's MLM head) and per-token vectors (BGE-M3's ColBERT
head or a ColBERT/PyLate projection) computed from one pass over the last hidden states.
The torch runtime runs it; an ONNX export can trace the same module.

:func:`build_module` assembles it from a :class:`~hybridembed.registry.ModelSpec`; which
heads exist is the spec's data, not a code path per model."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UnsupportedModelError

log = logging.getLogger(__name__)


def load_linear_head(path, dtype: torch.dtype) -> nn.Linear:
    """A linear head saved as a state dict (BGE-M3's ``*_linear.pt``), loaded without
    executing any pickled code."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    weight = state["weight"]
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    layer.load_state_dict(state)
    return layer.to(dtype)


def _activation(path: str) -> nn.Module:
    """An instance of the torch.nn activation class ``path`` names (the registry allows only
    plain torch.nn classes)."""
    return getattr(nn, path.rsplit(".", 1)[-1])()


def load_dense_chain(layers, dtype: torch.dtype) -> nn.Sequential | None:
    """sentence-transformers ``Dense`` modules (``linear.weight``/``linear.bias`` in
    safetensors or a torch state dict) as one ``nn.Sequential`` of Linear + activation."""
    if not layers:
        return None
    steps: list[nn.Module] = []
    for layer in layers:
        if layer.weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(layer.weights))
        else:
            state = torch.load(layer.weights, map_location="cpu", weights_only=True)
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()
                                if k.startswith("linear.")})
        steps += [linear, _activation(layer.activation)]
    return nn.Sequential(*steps).to(dtype)


def split_masked_lm(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(encoder, mlm_head)`` of a ``*ForMaskedLM`` model: its base model, and its other
    children in order (BERT's ``cls``, RoBERTa's ``lm_head``, ModernBERT's head + decoder)
    as one module, checked on a short input to reproduce the model's own logits."""
    prefix = model.base_model_prefix
    encoder = getattr(model, prefix)
    head = nn.Sequential(*(m for name, m in model.named_children()
                           if name != prefix and "loss" not in name.lower()))
    ids = torch.tensor([[min(5, model.config.vocab_size - 1)] * 4])
    with torch.inference_mode():
        want = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        got = head(encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state)
    if got.shape != want.shape or not torch.allclose(got.float(), want.float(), atol=1e-3,
                                                     rtol=1e-3):
        raise UnsupportedModelError(f"cannot separate the MLM head of {type(model).__name__} "
                                    "from its encoder (its children do not compose to its logits)")
    return encoder, head


class EncoderWithHeads(nn.Module):
    """Returns ``(pooled, weights, vectors)``; each ``None`` unless asked for and present.

    pooled: ``(batch, dim)`` after pooling and Dense modules, not normalised.
    weights: ``(batch, length)`` BGE-M3 token weights, or with ``splade`` the
    ``(batch, vocab)`` SPLADE vocabulary weights.
    vectors: ``(batch, length - 1, d)`` for BGE-M3 / hidden-state fallback (first token
    dropped, padding zeroed), or with ``all_tokens`` ``(batch, length, d)`` for every
    position (the caller picks the rows that count), L2-normalised, float32.
    """

    def __init__(self, encoder: nn.Module, pooling: str, sparse_linear: nn.Linear | None,
                 colbert_linear: nn.Linear | None, *, dense_layers: nn.Module | None = None,
                 mlm_head: nn.Module | None = None, splade=None, all_tokens: bool = False):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.sparse_linear = sparse_linear
        self.colbert_linear = colbert_linear
        self.dense_layers = dense_layers
        self.mlm_head = mlm_head
        self.splade_sum = splade is not None and splade.pooling == "sum"
        self.splade_twice = splade is not None and splade.activation == "log1p_relu"
        self.all_tokens = all_tokens

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "lasttoken":
            last = mask.sum(dim=1).long() - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * weights).sum(dim=1)
        return summed / weights.sum(dim=1).clamp(min=1e-9)

    def dense_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """The pipeline's Dense modules (if any) applied to ``(batch, hidden)`` pooled
        states: late chunking pools spans itself and then calls this."""
        return pooled if self.dense_layers is None else self.dense_layers(pooled)

    def splade(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """SPLADE vocabulary weights: ``log1p(relu(logits))`` pooled over real tokens. For
        max pooling the max is taken over the logits first (log1p and relu do not change
        which token is largest), so the activation runs on ``(batch, vocab)`` only."""
        # (batch, length, vocab): the largest tensor of the pass (16 GB at the CUDA batch
        # budget in float32), so it is masked in place and widened only after pooling
        logits = self.mlm_head(hidden).masked_fill_(~mask.bool().unsqueeze(-1), 0)
        if self.splade_sum:
            out = torch.log1p(torch.relu(logits.float()))
            if self.splade_twice:
                out = torch.log1p(out)
            return out.sum(dim=1)
        out = torch.log1p(torch.relu(logits.amax(dim=1).float()))
        return torch.log1p(out) if self.splade_twice else out

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
        for an output not asked for. ``pooled`` has been through the Dense modules."""
        pooled = None
        if dense:
            pooled = self.dense_head(self.pool(hidden, attention_mask))
        weights = None
        if sparse and self.mlm_head is not None:
            weights = self.splade(hidden, attention_mask)
        elif sparse and self.sparse_linear is not None:
            weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1)
        vectors = None
        if multivector:
            tokens = hidden if self.all_tokens else hidden[:, 1:]
            if self.colbert_linear is not None:
                tokens = self.colbert_linear(tokens)
            if not self.all_tokens:
                tokens = tokens * attention_mask[:, 1:].unsqueeze(-1).to(tokens.dtype)
            vectors = F.normalize(tokens.float(), dim=-1)
        return pooled, weights, vectors


def build_module(spec, dtype: torch.dtype, load_encoder) -> EncoderWithHeads:
    """The module for ``spec``: ``load_encoder(auto_class, spec, dtype)`` loads the encoder
    (with its MLM head where the spec has SPLADE), the rest comes from the spec's files."""
    from transformers import AutoModel, AutoModelForMaskedLM

    mlm_head = None
    if spec.masked_lm:
        encoder, mlm_head = split_masked_lm(load_encoder(AutoModelForMaskedLM, spec, dtype))
    else:
        encoder = load_encoder(AutoModel, spec, dtype)
    sparse = load_linear_head(spec.sparse_head, dtype) if spec.sparse_head else None
    colbert = load_linear_head(spec.colbert_head, dtype) if spec.colbert_head else None
    if spec.token_projection:
        colbert = load_dense_chain(spec.token_projection, dtype)
    return EncoderWithHeads(encoder, spec.pooling, sparse, colbert,
                            dense_layers=load_dense_chain(spec.dense_layers, dtype),
                            mlm_head=mlm_head, splade=spec.splade,
                            all_tokens=spec.late_interaction is not None)
