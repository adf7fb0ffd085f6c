"""Randomly initialised encoders saved in BAAI/bge-m3's layout, so speed can be measured on
a model's real shape where its weights cannot be downloaded (and tests can load a tiny
one through the same code as real weights).

The layout: an XLM-RoBERTa encoder (``config.json`` + safetensors), ``sparse_linear.pt``
and ``colbert_linear.pt`` heads, a tokenizer with XLM-R's special tokens at XLM-R's ids
(``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3) and sentence-transformers files (CLS
pooling, normalisation). The tokenizer is a small BPE trained on the given texts, so the
generated corpora tokenize to about one token per word; the embedding matrix still has the
shape's full vocabulary. Vectors are meaningless; shapes, FLOPs and memory are real.

    python -m hybridembed.bench.random_model /tmp/bge-m3-shaped --shape bge-m3
    hybridembed bench --model /tmp/bge-m3-shaped --engines sentence-transformers torch \
        --outputs dense,sparse,multivector
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from . import corpus

# XLM-RoBERTa-large as BAAI/bge-m3 configures it, and a tiny one for tests.
SHAPES: dict[str, dict[str, int]] = {
    "bge-m3": {"hidden": 1024, "layers": 24, "heads": 16, "intermediate": 4096,
               "vocab_size": 250_002, "positions": 8194, "max_length": 8192},
    "tiny": {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64, "vocab_size": 300,
             "positions": 130, "max_length": 128},
}


def build_xlmr_tokenizer(folder: Path, texts: Sequence[str], vocab_size: int,
                         max_length: int) -> None:
    """A BPE tokenizer trained on ``texts`` with XLM-R's special tokens, ids and
    ``<s> A </s>`` template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size,
                                                       special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>",
                                   model_max_length=max_length)
    fast.save_pretrained(str(folder))


def build_bge_m3_layout(folder: str | Path, shape: str | dict[str, int] = "bge-m3", *,
                        colbert_dim: int | None = None, seed: int = 0,
                        tokenizer_texts: Sequence[str] | None = None,
                        tokenizer_vocab: int | None = None) -> Path:
    """Save a randomly initialised model of ``shape`` (a name in :data:`SHAPES` or its
    numbers) in the BGE-M3 layout under ``folder``; returns the folder."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    s = SHAPES[shape] if isinstance(shape, str) else shape
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = tokenizer_texts if tokenizer_texts is not None else corpus.named("mixed", 2000)
    build_xlmr_tokenizer(folder, texts, tokenizer_vocab or min(s["vocab_size"], 2000),
                         s["max_length"])
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=s["vocab_size"], hidden_size=s["hidden"],
                              num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                              intermediate_size=s["intermediate"],
                              max_position_embeddings=s["positions"], pad_token_id=1,
                              bos_token_id=0, eos_token_id=2)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    hidden = s["hidden"]
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
        json.dumps({"max_seq_length": s["max_length"], "do_lower_case": False}))
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridembed.bench.random_model",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bge-m3")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_bge_m3_layout(args.folder, args.shape, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
