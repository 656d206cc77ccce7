"""Methods built once per worker process, not once per task.

A task that runs a deconvolver carries a :class:`MethodRef` (the method's registered name
and its options as canonical JSON), never the instance: instances may hold weights, device
handles or compiled functions that should neither travel with every task nor be rebuilt
for it. :func:`worker_method` builds the instance at a worker's first task with that
reference and keeps it for the worker's lifetime (a cache keyed by name + options). A task
that runs in the client itself (the inline executor) may carry the instance instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodRef:
    """A method a worker builds itself: ``load_method(name, **json.loads(options_json))``."""

    name: str
    options_json: str = "{}"

    @classmethod
    def of(cls, name: str, options: dict | None = None) -> MethodRef:
        """The reference of method ``name`` with ``options`` (canonical JSON, sorted keys)."""
        return cls(name, json.dumps(options or {}, sort_keys=True))


_WORKER_METHODS: dict[MethodRef, object] = {}


def worker_method(method):
    """The method instance of a task: the instance itself (a task run in the client) or,
    for a :class:`MethodRef`, the one this process built at its first task with it."""
    if not isinstance(method, MethodRef):
        return method
    if method not in _WORKER_METHODS:
        from ..methods import load_method

        _WORKER_METHODS[method] = load_method(method.name, **json.loads(method.options_json))
    return _WORKER_METHODS[method]
