"""Building an :class:`~hybridembed.types.EmbedRequest`: the one place where an embedding
call's texts and options are checked. Every way in (Python API, each HTTP protocol, CLI,
stores, migration) ends here, so each gets the same answer to the same input."""

from __future__ import annotations

from ..errors import InvalidInputError, InvalidOptionError
from ..registry import ModelSpec
from ..textcheck import check_text, check_texts
from ..types import (
    CHUNK_POOLINGS,
    KINDS,
    OVERFLOWS,
    TRUNCATION_SIDES,
    EmbedOptions,
    EmbedRequest,
)


def _flag(name: str, value) -> bool:
    # JSON ``true`` must never become 1, nor ``"no"`` a truth value: only real booleans.
    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name} must be true or false, got {value!r}", name)
    return value


def _check_inputs(inputs, vocab_size: int | None) -> tuple[str | tuple[int, ...], ...]:
    """Texts, and (where ``vocab_size`` is given) token-id lists of the model's own
    vocabulary, which are embedded exactly as sent."""
    if vocab_size is None or isinstance(inputs, str) or not isinstance(inputs, list | tuple) \
            or not any(isinstance(x, list | tuple) for x in inputs):
        return tuple(check_texts(inputs))
    out: list[str | tuple[int, ...]] = []
    for i, item in enumerate(inputs):
        if not isinstance(item, list | tuple):
            out.append(check_text(item, i))
            continue
        if not item:
            raise InvalidInputError(f"input #{i} is an empty token-id list", i)
        for tid in item:
            if isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid < vocab_size:
                raise InvalidInputError(f"input #{i}: token id {tid!r} is not a whole number in "
                                        f"this model's vocabulary (0..{vocab_size - 1})", i)
        out.append(tuple(item))
    return tuple(out)


def build_request(spec: ModelSpec, texts, *, dense: bool = True, sparse: bool = False,
                  multivector: bool = False, kind: str = "document",
                  prompt_name: str | None = None, truncate: bool | None = None,
                  truncation_side: str = "right", dimensions: int | None = None,
                  normalize: bool = True, overflow: str | None = None,
                  chunk_pooling: str = "mean", chunk_overlap: int = 0,
                  max_active_dims: int | None = None,
                  vocab_size: int | None = None) -> EmbedRequest:
    """Check ``texts`` and every option against the model ``spec`` and return the
    request value. With ``vocab_size``, an item of ``texts`` may also be a list of the
    model's token ids (no special tokens), embedded as sent.

    ``overflow`` (``"error"``, ``"truncate"``, ``"chunk"``) decides what happens to a
    text over the model's limit; when not given, the older ``truncate`` flag decides
    (``False``: ``"error"``; ``True`` or not given: ``"truncate"``). ``truncate=False``
    with an ``overflow`` other than ``"error"`` contradicts itself and is refused.
    ``chunk_overlap`` (tokens shared by neighbouring windows) runs from 0 to half the
    model's limit. ``max_active_dims`` (a whole number >= 1) prunes each sparse vector to
    its heaviest entries.

    Raises :class:`InvalidInputError` (a text is not a string or is not valid Unicode,
    naming its index) or :class:`InvalidOptionError` (naming the option, what was given
    and what is valid).
    """
    checked = _check_inputs(texts, vocab_size)
    if truncate is not None:
        _flag("truncate", truncate)
    if overflow is None:
        overflow = "error" if truncate is False else "truncate"
    elif overflow not in OVERFLOWS:
        raise InvalidOptionError(f"overflow must be one of {', '.join(OVERFLOWS)}, got "
                                 f"{overflow!r}", "overflow")
    elif truncate is False and overflow != "error":
        raise InvalidOptionError(f"truncate=false contradicts overflow={overflow!r}; send "
                                 "one of them (truncate=false means overflow 'error')",
                                 "overflow")
    if chunk_pooling not in CHUNK_POOLINGS:
        raise InvalidOptionError(f"chunk_pooling must be one of {', '.join(CHUNK_POOLINGS)}, "
                                 f"got {chunk_pooling!r}", "chunk_pooling")
    most_overlap = spec.max_length // 2
    if (isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int)
            or not 0 <= chunk_overlap <= most_overlap):
        raise InvalidOptionError(f"chunk_overlap must be a whole number of tokens from 0 to "
                                 f"{most_overlap} (half this model's limit), got "
                                 f"{chunk_overlap!r}", "chunk_overlap")
    options = EmbedOptions(
        dense=_flag("dense", dense), sparse=_flag("sparse", sparse),
        multivector=_flag("multivector", multivector), kind=kind, prompt_name=prompt_name,
        overflow=overflow, truncation_side=truncation_side, chunk_pooling=chunk_pooling,
        chunk_overlap=chunk_overlap, dimensions=dimensions,
        normalize=_flag("normalize", normalize), max_active_dims=max_active_dims)
    if not (dense or sparse or multivector):
        raise InvalidOptionError("ask for at least one output: dense, sparse or multivector",
                                 "outputs")
    if kind not in KINDS:
        raise InvalidOptionError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}", "kind")
    if prompt_name is not None and prompt_name not in spec.prompts and prompt_name not in KINDS:
        valid = ", ".join(sorted(set(spec.prompts) | set(KINDS)))
        raise InvalidOptionError(f"unknown prompt_name {prompt_name!r}; this model's prompts: "
                                 f"{valid}", "prompt_name")
    if truncation_side not in TRUNCATION_SIDES:
        raise InvalidOptionError(f"truncation_side must be one of "
                                 f"{', '.join(TRUNCATION_SIDES)}, got {truncation_side!r}",
                                 "truncation_side")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or not 1 <= dimensions <= spec.dim):
        raise InvalidOptionError(f"dimensions must be a whole number from 1 to {spec.dim} "
                                 f"(this model's size), got {dimensions!r}", "dimensions")
    if max_active_dims is not None and (isinstance(max_active_dims, bool)
                                        or not isinstance(max_active_dims, int)
                                        or max_active_dims < 1):
        raise InvalidOptionError(f"max_active_dims must be a whole number of at least 1 (sparse "
                                 f"entries kept per text), got {max_active_dims!r}",
                                 "max_active_dims")
    return EmbedRequest(checked, options)


def prompt_of(spec: ModelSpec, options: EmbedOptions) -> str:
    """The prefix put before every text: the named prompt, else the one for ``kind``."""
    name = options.prompt_name if options.prompt_name is not None else options.kind
    return spec.prompts.get(name, "")
