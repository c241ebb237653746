"""How a value of a sweep table compares and reads, for every view (tables, grids, plots, explorer).

A table cell may hold None or NaN (no negative prompt), numpy scalars, lists or dicts. Views
group and match cells by `norm_value` (None and NaN are one value, lists compare by their repr)
and label them with `format_value` (``0.75``, ``""``, ``(none)``, long text shortened). Only
numpy is imported, so the table (`result`) and the views (`grid`, `plots`, `widgets`) share
this module without importing each other.
"""

from __future__ import annotations

import math

import numpy as np

NULL = "\x00<null>"  # what `norm_value` gives for None/NaN, so they group as one value
NONE_TEXT = "(none)"  # how a missing value (None/NaN, e.g. no negative prompt) reads
LABEL_CHARS = 28  # labels longer than this (prompts, URLs) are shortened


def norm_value(value):
    """A hashable stand-in for a cell value: None/NaN become `NULL`, lists/dicts/arrays their repr
    (a tuple and an array as the list they hold, so a value compares equal after a parquet round trip).

    Example:
        >>> norm_value(float("nan")) == norm_value(None)
        True
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NULL
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, float) and math.isnan(value):
            return NULL
    if isinstance(value, (np.ndarray, tuple)):  # a tuple comes back from parquet as an array: one form
        value = value.tolist() if isinstance(value, np.ndarray) else list(value)
    if isinstance(value, (list, dict, set)):
        return repr(value)
    return value


def is_null(value) -> bool:
    """Whether a cell value is missing: None, NaN (a float or a numpy scalar)."""
    return norm_value(value) == NULL


def format_value(value, max_chars: int = LABEL_CHARS, ellipsis: str = "…") -> str:
    """A short label for a parameter value: ``0.75``, ``""`` for an empty prompt, ``(none)`` for
    None/NaN (no negative prompt), long text shortened.

    Example:
        >>> format_value(0.75), format_value(None)
        ('0.75', '(none)')
    """
    if is_null(value):
        return NONE_TEXT
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, str):
        text = '""' if value == "" else " ".join(value.split())
    else:
        text = str(value)
    if len(text) > max_chars:
        text = text[: max_chars - len(ellipsis)].rstrip() + ellipsis
    return text
