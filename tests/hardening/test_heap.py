"""Start-up's heap is collected once, then frozen out of later collections."""

from __future__ import annotations

import gc
import weakref

from services.common.server import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_start_up_garbage_is_collected_and_what_lives_is_frozen() -> None:
    garbage_a, garbage_b = Node(), Node()
    garbage_a.other, garbage_b.other = garbage_b, garbage_a  # a cycle: only gc frees it
    gone = weakref.ref(garbage_a)
    del garbage_a, garbage_b
    kept = [Node() for _ in range(1000)]
    frozen_before = gc.get_freeze_count()
    try:
        freeze_startup_heap()
        assert gone() is None
        # Everything alive (our 1,000 nodes with it) now sits outside the generations that
        # collections walk.
        assert gc.get_freeze_count() >= frozen_before + len(kept)
        assert all(not any(n is obj for obj in gc.get_objects(generation=2)) for n in kept[:3])
    finally:
        gc.unfreeze()
