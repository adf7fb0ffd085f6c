"""How OpenAI token-id inputs are read (``hybridembed serve --token-ids``).

OpenAI's own clients and langchain-openai (by default, ``check_embedding_ctx_length``)
tokenise texts with tiktoken's ``cl100k_base`` and send the id arrays. Read in the served
model's vocabulary, those ids mean other words (wrong vectors with a 200), so the default
policy decodes them exactly with ``cl100k_base`` and embeds the text. ``model`` takes the
ids as the served model's own, fed to the encoder as sent (``[UNK]`` stays); ``refuse``
answers 400 naming LangChain's switch.

The ``cl100k_base`` ranks come from the MIT-licensed ``bpe-openai`` package (its
``data/cl100k_base.tiktoken.gz``, the file OpenAI publishes for tiktoken, checked against
tiktoken's own SHA-256), so nothing is downloaded at run time.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.util
from pathlib import Path

from .errors import ApiError

POLICIES = ("cl100k", "model", "refuse")
CL100K_MAX_ID = 100_255  # the last ordinary token; special tokens come after
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# cl100k_base's pre-tokenisation pattern and special tokens, as tiktoken defines them.
_CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                   r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
_CL100K_SPECIAL = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                   "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                   "<|endofprompt|>": 100276}


def cl100k_file() -> bytes:
    """The ``cl100k_base.tiktoken`` file (what tiktoken downloads), from the installed
    ``bpe-openai`` package, after checking its SHA-256."""
    # Located without importing bpe_openai: its import loads a 74 MB extension we never call.
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or spec.origin is None:
        raise RuntimeError("the bpe-openai package (which ships cl100k_base) is not installed")
    packed = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken.gz"
    data = gzip.decompress(packed.read_bytes())
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise RuntimeError("bpe-openai's cl100k_base.tiktoken does not match tiktoken's hash")
    return data


@functools.cache
def cl100k():
    """A ``tiktoken.Encoding`` of ``cl100k_base``, built offline."""
    import tiktoken

    ranks = {base64.b64decode(token): int(rank) for token, rank in
             (line.split() for line in cl100k_file().splitlines() if line)}
    return tiktoken.Encoding(name="cl100k_base", pat_str=_CL100K_PATTERN,
                             mergeable_ranks=ranks, special_tokens=_CL100K_SPECIAL)


def read_token_ids(policy: str, id_lists: list[list[int]]) -> list[str] | list[list[int]]:
    """The inputs an OpenAI request's token-id lists stand for under ``policy``: texts
    (``cl100k``), the lists themselves (``model``), or a 400 (``refuse``)."""
    if policy == "refuse":
        raise ApiError(400, "this server does not take token-id inputs; langchain-openai sends "
                       "cl100k_base token ids unless OpenAIEmbeddings(..., "
                       "check_embedding_ctx_length=False) is set — set it, or start the "
                       "server with --token-ids cl100k", param="input")
    if policy == "model":
        return id_lists
    enc = cl100k()
    texts = []
    for i, ids in enumerate(id_lists):
        bad = [t for t in ids if not 0 <= t <= CL100K_MAX_ID]
        if bad:
            raise ApiError(400, f"input[{i}]: token id {bad[0]} is not an ordinary cl100k_base "
                           f"id (0..{CL100K_MAX_ID}); this server reads token ids as "
                           "cl100k_base, as OpenAI's clients send them (see --token-ids)",
                           param="input")
        # A real client's ids decode exactly; bytes that do not form whole UTF-8 characters
        # (ids cut mid-character) become U+FFFD, as tiktoken's own decode() does.
        texts.append(enc.decode_bytes(ids).decode("utf-8", errors="replace"))
    return texts
