"""Building an :class:`~hybridembed.types.EmbedRequest`: the one place where an embedding
call's texts and options are checked. Every way in (Python API, each HTTP protocol, CLI,
stores, migration) ends here, so each gets the same answer to the same input."""

from __future__ import annotations

from ..errors import InvalidOptionError
from ..registry import ModelSpec
from ..textcheck import check_texts
from ..types import KINDS, TRUNCATION_SIDES, EmbedOptions, EmbedRequest


def _flag(name: str, value) -> bool:
    # JSON ``true`` must never become 1, nor ``"no"`` a truth value: only real booleans.
    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name} must be true or false, got {value!r}", name)
    return value


def build_request(spec: ModelSpec, texts, *, dense: bool = True, sparse: bool = False,
                  multivector: bool = False, kind: str = "document",
                  prompt_name: str | None = None, truncate: bool = True,
                  truncation_side: str = "right", dimensions: int | None = None,
                  normalize: bool = True) -> EmbedRequest:
    """Check ``texts`` and every option against the model ``spec`` and return the
    request value.

    Raises :class:`InvalidInputError` (a text is not a string or is not valid Unicode,
    naming its index) or :class:`InvalidOptionError` (naming the option, what was given
    and what is valid).
    """
    checked = check_texts(texts)
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
    return EmbedRequest(tuple(checked), options)


def prompt_of(spec: ModelSpec, options: EmbedOptions) -> str:
    """The prefix put before every text: the named prompt, else the one for ``kind``."""
    name = options.prompt_name if options.prompt_name is not None else options.kind
    return spec.prompts.get(name, "")
