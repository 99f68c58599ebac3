"""``error_type``: the name of an exception's class as a bounded value a query can group by.

A failed request's access line (and its Loki entry's structured metadata) carries the type of the
exception that failed it, so one LogQL metric query counts failures by type. The name is the one a
traceback prints (``demo.faults.InjectedFault``; builtins bare: ``ValueError``), so it matches
the last row of the ``exception`` field. Class names come from code, not from requests, but a
class made at run time can have any name: it is cut to :data:`MAX_ERROR_TYPE_CHARS` and anything
outside ``[A-Za-z0-9_.]`` (``<locals>``, non-ASCII) becomes ``_``.
"""

from __future__ import annotations

import re

#: The longest ``error_type`` written; longer names are cut.
MAX_ERROR_TYPE_CHARS = 128
_OUTSIDE = re.compile(r"[^A-Za-z0-9_.]")
#: Per class: the name is computed once (a failing route fails with the same few types).
_names: dict[type, str] = {}
_MAX_CACHED = 1024


def error_type(cls: type[BaseException]) -> str:
    """The bounded name of ``cls``: ``module.QualName`` as a traceback writes it (``builtins``
    and ``__main__`` left out), ``[A-Za-z0-9_.]`` only, at most 128 characters."""
    name = _names.get(cls)
    if name is None:
        module, qualname = getattr(cls, "__module__", None), getattr(cls, "__qualname__", "?")
        full = qualname if module in (None, "builtins", "__main__") else f"{module}.{qualname}"
        name = _OUTSIDE.sub("_", str(full)[:MAX_ERROR_TYPE_CHARS]) or "_"
        if len(_names) < _MAX_CACHED:  # classes made at run time must not grow it without end
            _names[cls] = name
    return name
