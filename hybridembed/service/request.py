"""Building an :class:`~hybridembed.types.EmbedRequest`: the one place where an embedding
call's texts and options are checked. Every way in (Python API, each HTTP protocol, CLI,
stores, migration) ends here, so each gets the same answer to the same input."""

from __future__ import annotations

from ..errors import InvalidInputError, InvalidOptionError
from ..registry import ModelSpec
from ..textcheck import check_text, check_texts
from ..types import KINDS, TRUNCATION_SIDES, EmbedOptions, EmbedRequest


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
                  prompt_name: str | None = None, truncate: bool = True,
                  truncation_side: str = "right", dimensions: int | None = None,
                  normalize: bool = True, vocab_size: int | None = None) -> EmbedRequest:
    """Check ``texts`` and every option against the model ``spec`` and return the
    request value. With ``vocab_size``, an item of ``texts`` may also be a list of the
    model's token ids (no special tokens), embedded as sent.

    Raises :class:`InvalidInputError` (a text is not a string or is not valid Unicode,
    naming its index) or :class:`InvalidOptionError` (naming the option, what was given
    and what is valid).
    """
    checked = _check_inputs(texts, vocab_size)
    options = EmbedOptions(
        dense=_flag("dense", dense), sparse=_flag("sparse", sparse),
        multivector=_flag("multivector", multivector), kind=kind, prompt_name=prompt_name,
        truncate=_flag("truncate", truncate), truncation_side=truncation_side,
        dimensions=dimensions, normalize=_flag("normalize", normalize))
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
    return EmbedRequest(checked, options)


def prompt_of(spec: ModelSpec, options: EmbedOptions) -> str:
    """The prefix put before every text: the named prompt, else the one for ``kind``."""
    name = options.prompt_name if options.prompt_name is not None else options.kind
    return spec.prompts.get(name, "")
