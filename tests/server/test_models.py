"""The server's models over their life (server/models.py): in a server that owns its
process, each loaded model is frozen out of the garbage collector's full passes, and a
model unloaded later is still freed."""

from __future__ import annotations

import asyncio
import gc
import weakref

from hybridembed.config import Settings
from hybridembed.server.models import ModelConfig, ModelRegistry


def _alive_to_the_collector(obj) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_loaded_models_are_frozen_and_an_unloaded_one_is_freed(minilm, tiny_m3_dir):
    configs = [ModelConfig("minilm", "minilm"), ModelConfig("m3", str(tiny_m3_dir), lazy=True)]

    async def scenario():
        registry = ModelRegistry(Settings(), configs, {"minilm": minilm}, gc_freeze=True)
        await registry.start()
        try:
            assert not _alive_to_the_collector(minilm)  # frozen once loaded
            async with registry.use("m3", "embed") as slot:  # a lazy load, frozen too
                lazy = slot.embedder
                assert lazy.embed(["a text to embed"]).dense.shape == (1, lazy.dim)
                assert not _alive_to_the_collector(lazy)
                gone = weakref.ref(lazy)
                del lazy
            assert await registry.unload(registry.slots["m3"], "test")
            # freed when unload returns, though the embedder sits in reference cycles of
            # its own (frozen, they would never be collected)
            assert gone() is None
            assert not _alive_to_the_collector(minilm)  # the others frozen again
        finally:
            await registry.stop()

    try:
        asyncio.run(scenario())
    finally:
        gc.unfreeze()

