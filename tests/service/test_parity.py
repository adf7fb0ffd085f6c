"""Dense parity with sentence-transformers on the packaged MiniLM, and BGE-M3 heads on a
tiny random XLM-RoBERTa against an independent reference computed from the math."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tests.models import WORDS


def mixed_texts(n: int = 200, seed: int = 1) -> list[str]:
    """Short, medium and over-the-limit (> 256 tokens) texts, some non-ASCII."""
    rng = np.random.default_rng(seed)
    extra = ["naïve café", "日本語のテキスト", "emoji 🚀 rocket", "", "   ", "UPPER lower MiXeD"]
    texts = []
    for i in range(n):
        length = int(rng.choice([3, 12, 40, 120, 300]))  # 300 words: past 256 tokens
        words = rng.choice(WORDS, size=length)
        texts.append(" ".join(words) + (" " + extra[i % len(extra)] if i % 7 == 0 else ""))
    return texts + extra


def assert_parity(ours: np.ndarray, reference: np.ndarray) -> None:
    cos = np.sum(ours * reference, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert cos.min() >= 0.9999, f"worst text #{int(cos.argmin())}: cosine {cos.min()}"


def test_dense_parity_with_sentence_transformers(minilm, st_reference):
    texts, reference = st_reference
    lengths = [len(ids) for ids in minilm.tokenize(texts, truncate=False)]
    assert len(texts) >= 200 and max(lengths) > minilm.max_length == 256
    assert_parity(minilm.embed(texts).dense, reference)


def _reference_m3(folder, text):
    """BGE-M3's outputs for one text, unbatched, straight from the math in the paper."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    sparse_state = torch.load(folder / "sparse_linear.pt", weights_only=True)
    colbert_state = torch.load(folder / "colbert_linear.pt", weights_only=True)
    ids = tok(text, truncation=True, max_length=128)["input_ids"]
    with torch.no_grad():
        h = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    dense = F.normalize(h[0], dim=-1).numpy()
    w = torch.relu(h @ sparse_state["weight"].T + sparse_state["bias"]).squeeze(-1).numpy()
    specials = {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    sparse: dict[int, float] = {}
    for token_id, weight in zip(ids, w, strict=True):
        if token_id not in specials and weight > 0:
            sparse[token_id] = max(sparse.get(token_id, 0.0), float(weight))
    colbert = h[1:] @ colbert_state["weight"].T + colbert_state["bias"]
    colbert = F.normalize(colbert, dim=-1).numpy()
    return dense, sparse, colbert


@pytest.mark.parametrize("max_batch_tokens", [64, 100_000])
def test_bge_m3_heads_match_reference(tiny_m3_dir, max_batch_tokens):
    from hybridembed import Embedder

    emb = Embedder(str(tiny_m3_dir), device="cpu", max_batch_tokens=max_batch_tokens,
                   cache_size=0)
    assert emb.spec.has_learned_sparse and emb.spec.pooling == "cls"
    texts = ["search the hybrid vector index", "cat", "", "dog " * 200,
             "the river city the river city", "unknown ßymbols ✓"]
    result = emb.embed(texts, dense=True, sparse=True, multivector=True)
    for i, text in enumerate(texts):
        dense, sparse, colbert = _reference_m3(tiny_m3_dir, text)
        np.testing.assert_allclose(result.dense[i], dense, atol=1e-5, rtol=1e-5)
        got = result.sparse[i].to_dict()
        assert sorted(got) == sorted(sparse), text
        np.testing.assert_allclose([got[k] for k in sorted(got)],
                                   [sparse[k] for k in sorted(sparse)], atol=1e-5, rtol=1e-5)
        assert result.multivector[i].shape == colbert.shape
        np.testing.assert_allclose(result.multivector[i], colbert, atol=1e-5, rtol=1e-5)
    assert result.usage.tokens[3] == 128  # truncated to the model's limit
