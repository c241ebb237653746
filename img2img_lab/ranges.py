"""Numbers and ranges as a spec writes them: `0.5`, `"1e-3"`, `"0.3-0.9 (+0.2)"`, `{start, stop, num}`.

`expand_range` turns a range into its values, end inclusive, with Decimal arithmetic on the numbers
as written (0.3 to 0.9 in steps of 0.2 gives 0.7, not 0.7000000000000001); `number_text` reads
numbers and ranges written as text, comma-separated. Pure Python.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Mapping

from .errors import ValidationError

MAX_RANGE = 10_000  # values one range may expand to: a typo like step 1e-9 must not eat the memory

NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
RANGE_TEXT = re.compile(
    rf"^\s*(?P<start>{NUMBER})\s*-\s*(?P<stop>{NUMBER})\s*"
    rf"(?:\(\s*(?P<step>{NUMBER})\s*\)|\[\s*(?P<num>{NUMBER})\s*\])?\s*$"
)
_RANGE_KEYS = ({"start", "stop", "step"}, {"start", "stop", "num"})


def is_number(value) -> bool:
    """An int or a float, not a bool (YAML's `true` is no number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def expand_range(value, *, integer: bool = False, key: str = "value") -> list:
    """Expand a range, end inclusive, into its values.

    Decimal arithmetic on the numbers as written keeps float steps exact: 0.3 to 0.9 in steps of
    0.2 gives `[0.3, 0.5, 0.7, 0.9]`, not `0.7000000000000001`.

    Args:
        value: a mapping `{start, stop, step}` or `{start, stop, num}`, or the A1111 X/Y/Z plot
            text forms `"0.3-0.9 (+0.2)"` (step), `"0.3-0.9 [4]"` (count), `"1-5"` (step 1;
            whole numbers only). A step may be negative for a descending range: `"10-1 (-3)"`.
        integer: produce ints (seed, num_inference_steps); a count then rounds half up.
        key: the spec key, for error messages.

    Returns:
        A list of floats, or of ints when `integer`.

    Example:
        >>> expand_range({"start": 0.3, "stop": 0.9, "step": 0.2})
        [0.3, 0.5, 0.7, 0.9]
        >>> expand_range("10-50 [3]", integer=True)
        [10, 30, 50]
    """
    # 1. the parts as written: start, stop and a step or a count
    parts = _range_parts(key, value)
    start, stop = _decimal(key, parts["start"], "start"), _decimal(key, parts["stop"], "stop")
    # 2. the values, exactly
    if "num" in parts:
        values = _counted_values(key, start, stop, parts["num"], integer)
    else:
        values = _stepped_values(key, value, start, stop, parts.get("step"), integer)
    return [int(v) for v in values] if integer else [float(v) for v in values]


def _range_parts(key, value) -> dict:
    if isinstance(value, str):
        match = RANGE_TEXT.match(value)
        if match is None:
            raise ValidationError(
                f"`{key}` range {value!r} is not of the form 'start-stop', 'start-stop (+step)' or 'start-stop [count]'"
            )
        return {k: v for k, v in match.groupdict().items() if v is not None}
    if isinstance(value, Mapping):
        if set(value) not in _RANGE_KEYS:
            raise ValidationError(
                f"`{key}` range {dict(value)!r} must have the keys start, stop and either step or num"
            )
        return dict(value)
    raise ValidationError(f"`{key}` range must be a mapping or text, got {value!r}")


def _decimal(key, value, part) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValidationError(f"`{key}` range {part} must be a number, got {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValidationError(f"`{key}` range {part} must be a number, got {value!r}") from None
    if not number.is_finite():
        raise ValidationError(f"`{key}` range {part} must be a finite number, got {value!r}")
    return number


def _counted_values(key, start: Decimal, stop: Decimal, num, integer: bool) -> list[Decimal]:
    """`num` values from start to stop, evenly spaced (ints round half up)."""
    written = num
    if isinstance(num, str):
        num = int(num) if num.isdigit() else num
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValidationError(f"`{key}` range num must be an integer >= 1, got {written!r}")
    if num > MAX_RANGE:
        raise ValidationError(f"`{key}` range num={num} gives more than {MAX_RANGE} values")
    values = [start] if num == 1 else [start + (stop - start) * i / (num - 1) for i in range(num)]
    if num > 1:
        values[-1] = stop  # exact end, whatever the division rounded
    if integer:
        values = [v.quantize(Decimal(1), rounding="ROUND_HALF_UP") for v in values]
    return values


def _stepped_values(key, value, start: Decimal, stop: Decimal, step, integer: bool) -> list[Decimal]:
    """start, start + step, ... up to stop (whole-number ranges default to step 1)."""
    written = step
    if step is not None:
        step = _decimal(key, step, "step")
    elif start == start.to_integral_value() and stop == stop.to_integral_value():
        step = Decimal(1) if stop >= start else Decimal(-1)
    else:
        raise ValidationError(
            f"`{key}` range {value!r} needs a step '(+0.1)' or a count '[4]' (only whole-number "
            f"ranges like '1-5' default to step 1)"
        )
    if step == 0:
        raise ValidationError(f"`{key}` range step must not be 0, got {value!r}")
    if (stop - start) * step < 0:
        raise ValidationError(f"`{key}` range step {written} goes away from stop in {value!r}")
    count = int((stop - start) / step) + 1
    if count > MAX_RANGE:
        raise ValidationError(f"`{key}` range {value!r} gives {count} values, more than {MAX_RANGE}")
    values = [start + step * i for i in range(count)]
    if integer and any(v != v.to_integral_value() for v in values):
        raise ValidationError(f"`{key}` takes whole numbers, but the range {value!r} gives fractions")
    return values


def number_text(key, text: str, integer: bool) -> list:
    """Numbers written as text: '0.5', '1e-3', '0.3, 0.5', '0.3-0.9 (+0.2)', '1-5, 8'.

    Example:
        >>> number_text("strength", "0.3, 0.5-0.9 (+0.2)", integer=False)
        [0.3, 0.5, 0.7, 0.9]
    """
    values = []
    for part in text.split(","):
        part = part.strip()
        if re.fullmatch(NUMBER, part):
            number = Decimal(part)
            if integer and number != number.to_integral_value():
                raise ValidationError(f"`{key}` must be an integer, got {text!r}")
            values.append(int(number) if integer else float(number))
        elif RANGE_TEXT.match(part):
            values.extend(expand_range(part, integer=integer, key=key))
        else:
            raise ValidationError(f"`{key}` must be a number or a range like '0.3-0.9 (+0.2)', got {text!r}")
    return values
