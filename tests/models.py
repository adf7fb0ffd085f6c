"""Builders of tiny, randomly initialised models in real checkpoint layouts, so tests
exercise the same loading code as real weights without downloading anything."""

from __future__ import annotations

import random
from pathlib import Path

from hybridembed.bench import random_model

WORDS = ("search vector sparse dense hybrid token model query document retrieval ranking "
         "embedding lexical semantic database index batch memory fusion score colbert "
         "the a of and to in is for on with as by at from cat dog house tree river city").split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


def build_xlmr_tokenizer(folder: Path) -> None:
    """A small BPE tokenizer with XLM-R's special tokens at XLM-R's ids
    (<s>=0, <pad>=1, </s>=2, <unk>=3) and its ``<s> A </s>`` template."""
    random_model.build_xlmr_tokenizer(folder, corpus(), vocab_size=300, max_length=128)


def build_tiny_bge_m3(folder: Path, hidden: int = 32, colbert_dim: int | None = None,
                      seed: int = 0) -> Path:
    """Encoder + ``sparse_linear.pt`` + ``colbert_linear.pt`` + tokenizer +
    sentence-transformers files, as BAAI/bge-m3 ships them (the package's builder at the
    ``tiny`` shape, tokenizer trained on this module's words)."""
    shape = {**random_model.SHAPES["tiny"], "hidden": hidden, "intermediate": 2 * hidden}
    return random_model.build_bge_m3_layout(folder, shape, colbert_dim=colbert_dim, seed=seed,
                                            tokenizer_texts=corpus(), tokenizer_vocab=300)


def build_tiny_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised XLM-RoBERTa sequence classifier with one label, laid out as
    BAAI/bge-reranker-base ships (``config.json`` naming
    ``XLMRobertaForSequenceClassification``, weights and tokenizer; no
    sentence-transformers files)."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_xlmr_tokenizer(folder)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64,
                              max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, num_labels=1,
                              # wider than the default 0.02 so scores differ visibly
                              initializer_range=0.2)
    XLMRobertaForSequenceClassification(config).save_pretrained(str(folder))
    return folder


POISONED_WORD = "colbert"


def build_nan_model(folder: Path) -> Path:
    """The tiny BGE-M3 layout with the input embedding of :data:`POISONED_WORD` set to NaN:
    every output of a text holding that word is NaN (attention spreads it over the whole
    text), as an fp16 overflow on a GPU does; other texts are unaffected."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    folder = build_tiny_bge_m3(Path(folder))
    ids = AutoTokenizer.from_pretrained(str(folder))(POISONED_WORD,
                                                    add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{POISONED_WORD!r} must be one token of the tiny vocabulary: {ids}"
    weights = load_file(str(folder / "model.safetensors"))
    name = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[name][ids[0]] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def build_tiny_bert_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised BERT sequence classifier with one label and a WordPiece
    tokenizer over this module's words, laid out as cross-encoder/ms-marco-MiniLM ships
    (``config.json`` naming ``BertForSequenceClassification``, weights, tokenizer)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    letters = sorted({c for w in WORDS for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *letters,
             *(f"##{c}" for c in letters)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(str(folder / "vocab.txt"), model_max_length=128).save_pretrained(
        str(folder))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128, num_labels=1, initializer_range=0.2)
    BertForSequenceClassification(config).save_pretrained(str(folder))
    return folder
