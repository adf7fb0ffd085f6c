"""Builders of tiny, randomly initialised models in real checkpoint layouts, so tests
exercise the same loading code as real weights without downloading anything."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("search vector sparse dense hybrid token model query document retrieval ranking "
         "embedding lexical semantic database index batch memory fusion score colbert "
         "the a of and to in is for on with as by at from cat dog house tree river city").split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


def build_xlmr_tokenizer(folder: Path) -> None:
    """A small BPE tokenizer with XLM-R's special tokens at XLM-R's ids
    (<s>=0, <pad>=1, </s>=2, <unk>=3) and its ``<s> A </s>`` template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", model_max_length=128)
    fast.save_pretrained(str(folder))


def build_tiny_bge_m3(folder: Path, hidden: int = 32, colbert_dim: int | None = None,
                      seed: int = 0) -> Path:
    """Encoder + ``sparse_linear.pt`` + ``colbert_linear.pt`` + tokenizer +
    sentence-transformers files, as BAAI/bge-m3 ships them."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_xlmr_tokenizer(folder)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=300, hidden_size=hidden, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=2 * hidden,
                              max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    torch.save(torch.nn.Linear(hidden, 1).state_dict(), folder / "sparse_linear.pt")
    torch.save(torch.nn.Linear(hidden, colbert_dim or hidden).state_dict(),
               folder / "colbert_linear.pt")
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": hidden, "pooling_mode_cls_token": True,
         "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
         "pooling_mode_mean_sqrt_len_tokens": False}))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    return folder


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
