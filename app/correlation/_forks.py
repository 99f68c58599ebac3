"""Per-process state across fork: gunicorn forks its workers, after ``--preload`` with the app built.

Threads do not survive a fork and locks or buffers copied from the parent belong to the parent,
so objects that own them rebuild them in the child.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def rebuild_after_fork(obj: T, method: Callable[[T], None]) -> None:
    """Call ``method(obj)`` in every forked child, as long as ``obj`` is alive (not kept alive)."""
    ref = weakref.ref(obj)

    def hook() -> None:
        target = ref()
        if target is not None:
            method(target)

    os.register_at_fork(after_in_child=hook)
