"""Read-only plain data: what a spec holds, hashable, and back to what a pipeline or YAML wants.

A spec's values are plain data (what YAML can hold). `freeze` makes them hashable (lists ->
tuples, mappings -> `FrozenDict`), `thaw` gives a pipeline its lists back, `plain` gives YAML/JSON
builtins, and `canonical_json` is the one text form a content key is hashed from.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Mapping

from .errors import ValidationError


def canonical_json(obj) -> str:
    """One text for equal data: sorted keys, floats as repr (shortest round trip), no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default)


KEY_LENGTH = 20  # hex digits of a content key


def content_key(payload) -> str:
    """The content key of a sweep cell: the first `KEY_LENGTH` hex digits of the sha256 of the
    payload's `canonical_json`. Spec cells (`Cell.key`) and chain cells (`sweep_chain`) both use
    it; each payload carries its own version, so a change of payload never reuses old files."""
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:KEY_LENGTH]


def _json_default(obj):
    raise ValidationError(f"value {obj!r} of type {type(obj).__name__} can't be part of a content key")


class FrozenDict(dict):
    """A read-only dict: hashable, picklable, equal to a plain dict with the same items."""

    def _readonly(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is read-only; build a new spec with `replace`")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly
    __ior__ = _readonly

    def __hash__(self):
        try:
            return hash(frozenset(self.items()))
        except TypeError:  # values holding lists (Cell.call): hash their canonical form
            return hash(canonical_json(self))

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __repr__(self):
        return repr(dict(self))


def freeze(key, value):
    """Plain data (what YAML can hold) made hashable: lists -> tuples, dicts -> read-only dicts.

    Args:
        key: the spec key the value belongs to, for error messages.
        value: None, a string, number, bool, path, list/tuple or mapping of those.
    """
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(freeze(key, v) for v in value)
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ValidationError(f"`{key}` mapping keys must be strings, got {bad[0]!r}")
        return FrozenDict({k: freeze(key, v) for k, v in value.items()})
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ValidationError(
        f"`{key}` must be plain data (a string, number, bool, None, list or mapping) so the spec can be "
        f"written to YAML, got {value!r} of type {type(value).__name__}"
    )


def thaw(value, seq=list):
    """The frozen form back to what a pipeline expects: tuples -> `seq` at the top, lists below."""
    if isinstance(value, tuple):
        return seq(thaw(v) for v in value)
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    return value


def plain(value):
    """The frozen form as YAML/JSON-ready builtins."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value
