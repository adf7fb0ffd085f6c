"""Several models in one server: the configured models, which are loaded, with what
memory, and a batcher per model and task. Requests name a model (or get the documented
default of their task); a model loads at start or, when lazy, on first use; a memory
budget unloads the least recently used idle models; Ollama's ``keep_alive`` sets how
long a model stays loaded after a request.

Tasks: ``embed`` (an :class:`Embedder`) and ``rerank`` (a cross-encoder, or an embedder
with a ColBERT head — MaxSim, or BGE-M3's combined score). A cross-encoder cannot embed;
an embedder without a ColBERT head cannot rerank: asking either is a 404 naming ``model``
(for that task the model is not served), as is an unknown model.
Defaults: ``embed`` → the first configured embedding model; ``rerank`` → the first
cross-encoder, else the first embedder that can rerank.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from .. import registry
from ..errors import HybridEmbedError
from .errors import ApiError
from .wire import DURATION_PATTERN

log = logging.getLogger(__name__)

TASKS = ("embed", "rerank")
FOREVER = float("inf")


def parse_keep_alive(value) -> float | None:
    """Seconds a model stays loaded after a request, from Ollama's ``keep_alive``: a number
    of seconds or a duration string (``"10s"``, ``"5m"``, ``"1h"``); negative means
    forever, 0 unload at once; ``None`` keeps the server's setting. Raises
    :class:`ApiError` (400, ``keep_alive``) otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ApiError(400, f"keep_alive must be a duration such as \"5m\" or a number of "
                       f"seconds, got {value!r}", param="keep_alive")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.match(DURATION_PATTERN, str(value))
        if not match:
            raise ApiError(400, f"keep_alive must be a duration such as \"5m\", \"10s\" or a "
                           f"number of seconds, got {value!r}", param="keep_alive")
        unit = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
        seconds = float(match.group(1)) * unit
    return FOREVER if seconds < 0 else seconds


@dataclass
class ModelConfig:
    """One model the server may serve: ``name`` is what clients send, ``source`` what
    loads (alias, folder or Hugging Face id); ``fallback`` a smaller cross-encoder to use
    when a pair does not fit in memory."""

    name: str
    source: str
    lazy: bool = False
    fallback: str | None = None


def parse_model_option(text: str, lazy: bool = False) -> ModelConfig:
    """``SOURCE`` or ``NAME=SOURCE`` (the CLI's ``--model``)."""
    name, sep, source = text.partition("=")
    if not sep:
        name, source = text, text
    if not name or not source:
        raise ApiError(400, f"--model takes SOURCE or NAME=SOURCE, got {text!r}", param="model")
    return ModelConfig(name.strip(), source.strip(), lazy)


def read_config_file(path: str | Path) -> list[ModelConfig]:
    """Models from a JSON or TOML file: ``{"models": [{"name": ..., "source": ...,
    "lazy": false, "fallback": null}, ...]}`` (``source`` defaults to ``name``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
    else:
        data = json.loads(text)
    out = []
    for i, item in enumerate(data.get("models", [])):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"{path}: models[{i}] must be a table with a name")
        unknown = set(item) - {"name", "source", "lazy", "fallback"}
        if unknown:
            raise ValueError(f"{path}: models[{i}] has unknown keys {sorted(unknown)}; valid: "
                             "name, source, lazy, fallback")
        out.append(ModelConfig(item["name"], item.get("source") or item["name"],
                               bool(item.get("lazy", False)), item.get("fallback")))
    return out


def is_cross_encoder(source: str) -> bool:
    """Whether ``source``'s checkpoint is a sequence classifier (read from its
    ``config.json``, without loading weights)."""
    folder, _ = registry.locate(source)
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    archs = config.get("architectures") or []
    # sentence-transformers embedders have modules.json; cross-encoders do not need one
    return any(a.endswith("ForSequenceClassification") for a in archs)


def weights_bytes(source: str) -> int:
    """Size of ``source``'s weight files on disk: the memory estimate before loading."""
    try:
        folder, _ = registry.locate(source)
    except HybridEmbedError:
        return 0
    return sum(p.stat().st_size for p in Path(folder).rglob("*")
               if p.suffix in (".safetensors", ".bin", ".pt", ".onnx") and p.is_file())


def loaded_bytes(obj) -> int:
    """Memory held by a loaded model's parameters and buffers (its weight files when the
    runtime is not torch)."""
    module = getattr(obj, "model", None)
    if module is None or not hasattr(module, "parameters"):
        module = getattr(getattr(obj, "_runtime", None), "module", None)
    if module is not None and hasattr(module, "parameters"):
        return int(sum(t.numel() * t.element_size()
                       for t in (*module.parameters(), *module.buffers())))
    spec = getattr(obj, "spec", None)
    return weights_bytes(str(spec.path)) if spec is not None else 0


@dataclass
class ModelSlot:
    """One configured model and, while it is loaded, its objects and batchers."""

    config: ModelConfig
    task: str = "embed"           # what the model is: embed (an embedder) or rerank
    can_rerank: bool = False      # an embedder with a ColBERT head, or a cross-encoder
    embedder: object | None = None
    reranker: object | None = None  # a service of hybridembed.service.rerank
    batcher: object | None = None
    rerank_batcher: object | None = None
    loaded_at: float = 0.0
    last_used: float = 0.0
    expires: float = FOREVER
    bytes: int = 0
    load_seconds: float = 0.0
    error: str | None = None
    preloaded: bool = False       # given loaded, or the first model: never unloaded
    active: int = 0               # requests holding the model now (see ModelRegistry.use)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    aliases: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def loaded(self) -> bool:
        return self.embedder is not None or self.reranker is not None

    @property
    def model(self):
        return self.embedder if self.embedder is not None else self.reranker

    def busy(self) -> bool:
        return self.active > 0 or any(b is not None and (b.queued_texts or b._running)
                   for b in (self.batcher, self.rerank_batcher))


def served_embedder(settings, source: str):
    """The :class:`~hybridembed.service.Embedder` the server loads for ``source`` (an
    alias, folder or hub id) under ``settings``: its embedder options, with the runtime's
    serving options (:func:`hybridembed.runtimes.serving_options`). Loading errors pass
    through."""
    from ..runtimes import serving_options
    from ..service import Embedder

    return Embedder(**{**settings.embedder_options(), "model": source,
                       "runtime_options": serving_options(settings.runtime)})


def freeze_heap() -> None:
    """Collect what loading left behind, then move every object alive into the garbage
    collector's permanent generation (``gc.freeze``), which its full passes skip.

    Why: a loaded model is some 400,000 Python objects (MiniLM with torch and
    transformers), and a full pass visits each of them while holding the GIL: 0.4-0.5 s
    with every thread of the server stopped, on the 2-core machine, whenever enough newer
    objects (cached results, remembered token ids) have outlived the young generations
    (docs/BENCHMARKS.md). Frozen objects are never collected, so call this only in a
    process the server owns, and thaw before unloading (see :meth:`ModelRegistry.unload`).
    """
    gc.collect()
    gc.freeze()


class ModelRegistry:
    """The models of one server (see the module docs). ``settings`` gives the batcher
    limits, ``max_memory`` (bytes, 0: no budget) and ``keep_alive`` (seconds, default
    forever); ``preloaded`` maps configured names to objects already loaded (tests,
    embedding apps). ``gc_freeze``: after each load, :func:`freeze_heap` (a server that
    owns its process)."""

    def __init__(self, settings, configs: list[ModelConfig], preloaded: dict | None = None,
                 on_batch=None, gc_freeze: bool = False):
        if not configs:
            raise ValueError("configure at least one model")
        self.settings = settings
        self.on_batch = on_batch
        self.slots: dict[str, ModelSlot] = {}
        for c in configs:
            if c.name in self.slots:
                raise ValueError(f"model name {c.name!r} is configured twice")
            self.slots[c.name] = ModelSlot(c, aliases=_names_of(c))
        if settings.served_model_name:
            self.slots[configs[0].name].aliases |= _names_of(
                ModelConfig(settings.served_model_name, settings.served_model_name))
        self.preloaded = dict(preloaded or {})
        self.gc_freeze = gc_freeze
        self._reaper: asyncio.Task | None = None

    # -- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        for slot in self.slots.values():
            self._classify(slot)
            if slot.error is None and (slot.name in self.preloaded or not slot.config.lazy):
                await self._load(slot)
        self._reaper = asyncio.create_task(self._reap(), name="hybridembed-keep-alive")

    async def stop(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        for slot in self.slots.values():
            await self._stop_batchers(slot)

    def _classify(self, slot: ModelSlot) -> None:
        """The slot's task and whether it can rerank, from its files (or loaded object)."""
        from ..rerank import CrossEncoderReranker
        from ..service.rerank import _RerankService

        obj = self.preloaded.get(slot.name)
        try:
            if obj is not None:
                cross = isinstance(obj, CrossEncoderReranker | _RerankService)
                spec = None if cross else obj.spec
            else:
                cross = is_cross_encoder(slot.config.source)
                spec = None if cross else registry.resolve(slot.config.source)
        except HybridEmbedError as exc:
            slot.error = f"{type(exc).__name__}: {exc}"
            log.error("model %s cannot be served: %s", slot.name, slot.error)
            return
        slot.task = "rerank" if cross else "embed"
        slot.can_rerank = cross or spec.colbert_head is not None
        if spec is not None:
            slot.aliases |= _spec_names(spec)

    async def _load(self, slot: ModelSlot) -> None:
        async with slot.lock:
            if slot.loaded or slot.error:
                return
            began = time.perf_counter()
            obj = self.preloaded.get(slot.name)
            try:
                if obj is None:
                    await self._make_room(slot)
                    obj = await asyncio.to_thread(self._construct, slot)
                await self._attach(slot, obj)
            except Exception as exc:  # noqa: BLE001 - reported by /ready and each request
                slot.error = f"{type(exc).__name__}: {exc}"
                log.error("model %s failed to load: %s", slot.name, slot.error)
                return
            # given loaded, or the first (default) model: never unloaded
            slot.preloaded = slot.name in self.preloaded or slot is next(iter(self.slots.values()))
            slot.load_seconds = time.perf_counter() - began
            slot.loaded_at = slot.last_used = time.time()
            slot.expires = FOREVER
            slot.bytes = loaded_bytes(obj if not hasattr(obj, "reranker") else obj.reranker)
            log.info("loaded %s (%s, %.1f MiB) in %.1f s", slot.name, slot.task,
                     slot.bytes / 2**20, slot.load_seconds)
            if self.gc_freeze:
                freeze_heap()

    def _construct(self, slot: ModelSlot):
        s = self.settings
        if slot.task == "rerank":
            from ..rerank import CrossEncoderReranker

            return CrossEncoderReranker(
                slot.config.source, device=s.device,
                dtype=None if s.dtype == "auto" else s.dtype, fallback=slot.config.fallback,
                max_batch_tokens=s.max_batch_tokens or None)
        return served_embedder(s, slot.config.source)

    async def _attach(self, slot: ModelSlot, obj) -> None:
        from ..service.batcher import DynamicBatcher
        from ..service.rerank import rerank_service
        from ..service.rerank_batcher import RerankBatcher

        s = self.settings
        limits = dict(max_batch_requests=s.max_batch_requests or None,
                      max_queued_texts=s.max_queued_requests,
                      max_queued_tokens=s.max_queued_tokens or None, on_batch=self.on_batch)
        if slot.task == "embed":
            # On a multi-core CPU, one batch per core with one compute thread each (see the
            # batcher); elsewhere one batch at a time with the runtime's own threads. Where
            # batches cost their padding (a CPU runtime that pads), lanes take texts of
            # similar lengths together.
            lanes = getattr(obj, "parallel_forwards", 1)
            batcher = DynamicBatcher(
                obj, max_batch_tokens=obj.max_batch_tokens, lanes=lanes,
                threads=1 if lanes > 1 else None,
                by_length=obj.batch_cut if getattr(obj, "cuts_by_cost", False) else None,
                **limits)
            await batcher.start()
            slot.embedder, slot.batcher = obj, batcher
        if slot.can_rerank:
            service = rerank_service(obj)
            rerank_batcher = RerankBatcher(service, max_batch_tokens=service.max_batch_tokens,
                                           **limits)
            await rerank_batcher.start()
            slot.reranker, slot.rerank_batcher = service, rerank_batcher

    async def _stop_batchers(self, slot: ModelSlot) -> None:
        for b in (slot.batcher, slot.rerank_batcher):
            if b is not None:
                await b.stop()

    async def unload(self, slot: ModelSlot, why: str) -> bool:
        """Release a loaded model (not one given preloaded): its memory is free when this
        returns (a warning is logged if something still holds it). Returns whether it
        was."""
        if not slot.loaded or slot.preloaded:
            return False
        async with slot.lock:
            await self._stop_batchers(slot)
            device = getattr(slot.model, "device", "cpu")
            held = [weakref.ref(o) for o in (slot.embedder, slot.reranker) if o is not None]
            slot.embedder = slot.reranker = slot.batcher = slot.rerank_batcher = None
            slot.bytes = 0
            # The stopped batchers' tasks hold the model until their done callbacks have
            # run, a loop step later; collected before that, nothing was freed (and CUDA
            # memory stayed taken until some later full collection).
            await asyncio.sleep(0)
            if self.gc_freeze:
                gc.unfreeze()  # the model's own reference cycles were frozen with it
                freeze_heap()  # collected, the rest frozen again
            else:
                gc.collect()
            if str(device).startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
            if any(ref() is not None for ref in held):
                log.warning("model %s is still referenced after unloading; its memory is "
                            "not free", slot.name)
        log.info("unloaded %s (%s)", slot.name, why)
        return True

    async def _make_room(self, slot: ModelSlot) -> None:
        """Unload least recently used idle models until ``slot``'s weights fit the budget."""
        budget = self.settings.max_memory
        if not budget:
            return
        need = weights_bytes(slot.config.source)
        for other in sorted((o for o in self.slots.values() if o is not slot and o.loaded
                             and not o.preloaded), key=lambda o: o.last_used):
            if self.used_bytes() + need <= budget:
                return
            if not other.busy():
                await self.unload(other, f"making room for {slot.name} within --max-memory")
        if self.used_bytes() + need > budget:
            log.warning("%s needs %.1f MiB; with %.1f MiB in use by busy models the budget of "
                        "%.1f MiB is exceeded", slot.name, need / 2**20,
                        self.used_bytes() / 2**20, budget / 2**20)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.time()
            for slot in self.slots.values():
                if slot.loaded and not slot.preloaded and slot.expires <= now and not slot.busy():
                    await self.unload(slot, "keep_alive expired")

    # -- lookup ---------------------------------------------------------------------------
    def used_bytes(self) -> int:
        return sum(s.bytes for s in self.slots.values() if s.loaded)

    def default(self, task: str) -> ModelSlot | None:
        """The documented default model of ``task`` (see the module docs)."""
        live = [s for s in self.slots.values() if s.error is None]
        if task == "embed":
            return next((s for s in live if s.task == "embed"), None)
        return (next((s for s in live if s.task == "rerank"), None)
                or next((s for s in live if s.can_rerank), None))

    def find(self, name: str | None) -> ModelSlot | None:
        if name in (None, ""):
            return None
        for slot in self.slots.values():
            if name in slot.aliases:
                return slot
        return None

    def resolve(self, name: str | None, task: str) -> ModelSlot:
        """The slot serving ``task`` for a request naming ``name`` (``None``/empty: the
        default). Raises :class:`ApiError` 404 (unknown) or 400 (wrong kind), both
        naming ``model``."""
        if name in (None, ""):
            slot = self.default(task)
            if slot is None:
                what = ("embedding model" if task == "embed"
                        else "reranker (a cross-encoder, or an embedding model with a ColBERT "
                             "head)")
                raise ApiError(404, f"this server serves no {what}; models: "
                               f"{', '.join(self.slots)}", "not_found", "model")
            return slot
        slot = self.find(name)
        if slot is None:
            raise ApiError(404, f"model {name!r} is not served here; models: "
                           f"{', '.join(self.slots)}", "not_found", "model")
        embedders = ", ".join(s.name for s in self.slots.values() if s.task == "embed")
        rerankers = ", ".join(s.name for s in self.slots.values() if s.can_rerank)
        # A model of the wrong kind is, for this task, a model not served here: 404.
        if task == "embed" and slot.task != "embed":
            raise ApiError(404, f"model {name!r} is a cross-encoder (a reranker); it cannot "
                           f"embed. Embedding models here: {embedders or 'none'}",
                           "not_found", "model")
        if task == "rerank" and not slot.can_rerank:
            raise ApiError(404, f"model {name!r} is an embedding model without a ColBERT head; "
                           f"it cannot rerank. Rerankers here: {rerankers or 'none'}",
                           "not_found", "model")
        return slot

    @contextlib.asynccontextmanager
    async def use(self, name: str | None, task: str, keep_alive=None):
        """The loaded slot for one request (loading it first if lazy or unloaded), held
        for the request so it is never unloaded under it; afterwards it stays loaded for
        ``keep_alive`` (Ollama's; else the server's ``keep_alive``, else forever)."""
        seconds = parse_keep_alive(keep_alive)
        if seconds is None:
            default = parse_keep_alive(self.settings.keep_alive or None)
            seconds = FOREVER if default is None else default
        slot = self.resolve(name, task)
        slot.active += 1
        try:
            if not slot.loaded:
                if slot.error is None:
                    await self._load(slot)
                if not slot.loaded:
                    raise ApiError(503, f"model {slot.name!r} failed to load: {slot.error}",
                                   "not_ready")
            slot.last_used = time.time()
            yield slot
        finally:
            slot.active -= 1
            slot.last_used = time.time()
            slot.expires = slot.last_used + seconds

    def listing(self) -> list[ModelSlot]:
        return list(self.slots.values())


def _names_of(config: ModelConfig) -> set[str]:
    names = {config.name, config.source}
    return names | {n + ":latest" for n in names if ":" not in n}


def _spec_names(spec) -> set[str]:
    names = {spec.name}
    if spec.hf_id:
        names |= {spec.hf_id, spec.hf_id.rsplit("/", 1)[-1]}
    names.discard("")
    return names | {n + ":latest" for n in names}


def configs_of(settings, primary=None) -> list[ModelConfig]:
    """The models a server's settings name: ``model`` first (``primary``, an object
    already loaded, names it by its own model name), then ``models``, then the models of
    ``models_file``. ``served_model_name`` is one more name of the first."""
    if primary is not None:  # an Embedder (model: its name) or a CrossEncoderReranker
        name = primary.model if isinstance(getattr(primary, "model", None), str) else primary.name
        first = ModelConfig(name, str(getattr(getattr(primary, "spec", None), "path", "")
                                      or getattr(primary, "path", "") or name))
    else:
        first = parse_model_option(settings.model)
    configs = [first]
    configs += [parse_model_option(t.strip(), settings.lazy)
                for t in settings.models.split(",") if t.strip()]
    if settings.models_file:
        configs += read_config_file(settings.models_file)
    return configs


def describe(slot: ModelSlot) -> dict:
    """One model's state for ``/ready`` and the listings: name, task, loaded or not, memory
    (bytes), device and dtype when loaded."""
    state = ("failed" if slot.error else "loaded" if slot.loaded
             else "lazy" if slot.config.lazy else "unloaded")
    row = {"name": slot.name, "source": slot.config.source, "task": slot.task,
           "can_rerank": slot.can_rerank, "state": state, "memory_bytes": slot.bytes}
    if slot.loaded:
        model = slot.model
        row.update(device=getattr(model, "device", "cpu"), dtype=getattr(model, "dtype", ""),
                   load_seconds=round(slot.load_seconds, 3),
                   expires_at=None if slot.expires == FOREVER else slot.expires)
    if slot.error:
        row["error"] = slot.error
    return row


def readiness(core) -> dict:
    """``/ready``'s answer: every configured model loaded (or lazy, waiting for its first
    request) → 200; a model failed or still loading → :class:`ApiError` 503 naming it."""
    if core.models is None:
        why = (f"models failed to load: {core.load_error}" if core.load_error
               else "models loading")
        raise ApiError(503, why, "not_ready", retry_after=None if core.load_error else 2)
    rows = [describe(s) for s in core.models.listing()]
    failed = [r for r in rows if r["state"] == "failed"]
    if failed:
        raise ApiError(503, "model(s) failed to load: " + "; ".join(
            f"{r['name']}: {r['error']}" for r in failed), "not_ready")
    first = rows[0]
    return {"status": "ready", "model": first["name"], "device": first.get("device"),
            "load_seconds": round(core.load_seconds, 3), "models": rows}
