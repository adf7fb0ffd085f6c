"""Deterministic synthetic corpora for benchmarks (no download, same texts every run)."""

from __future__ import annotations

import random
from pathlib import Path

_VOCAB = ("retrieval dense sparse vector index query document model batch token search "
          "hybrid lexical semantic embedding ranking score fusion memory latency throughput "
          "river city forest mountain ocean history science music language market energy "
          "health policy travel weather garden kitchen library museum bridge station").split()
_GLUE = "the a of and to in is for on with as by at from that this it be are was".split()


def texts(n: int = 1000, min_words: int = 20, max_words: int = 40, seed: int = 0) -> list[str]:
    """``n`` sentences of ``min_words``..``max_words`` words, unique, reproducible."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(_VOCAB if rng.random() < 0.6 else _GLUE)
                 for _ in range(rng.randint(min_words, max_words))]
        out.append(f"{i}. " + " ".join(words).capitalize() + ".")
    return out


CORPORA = {"short": (20, 30), "long": (280, 320), "mixed": (5, 320)}


def named(kind: str, n: int, seed: int = 0) -> list[str]:
    """``short`` (~35 tokens), ``long`` (~400 tokens) or ``mixed`` texts."""
    if kind not in CORPORA:
        raise ValueError(f"unknown corpus {kind!r}; valid: {', '.join(CORPORA)} or a file path")
    lo, hi = CORPORA[kind]
    return texts(n, lo, hi, seed)


def load(name: str, n: int) -> list[str]:
    """``n`` texts of a named corpus, or the first ``n`` non-empty lines of a file."""
    path = Path(name)
    if path.is_file():
        return [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()][:n]
    return named(name, n)
