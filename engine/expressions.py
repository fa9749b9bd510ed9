"""Expressions in node params: `{{ ... }}` evaluated in Jinja2's immutable sandbox.

A param whose whole value is one `{{ expr }}` keeps the expression's native type (number, list,
dict); any other string with `{{ }}` in it renders to a string. Only `{{ }}` is recognised:
statements (`{% %}`) and comments are plain text, so a param cannot define macros or loops.

The sandbox stops attribute walks (`__class__`, `__globals__`, ...). On top of it this module caps
what an expression can allocate (string and list repetition, `**`, padding and width arguments)
so that a hostile expression fails its node with a clear error instead of exhausting memory.
Every template is compiled once (per flow version) and the compiled value is reused.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import string
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

#: Largest string, list or number of repetitions an expression may build.
MAX_SIZE = 1_000_000
#: Largest exponent `**` accepts, and the largest int any call may receive (widths, counts).
MAX_EXPONENT = 1_000
MAX_INT_ARG = MAX_SIZE
#: Longest expression source accepted; deeper nesting than this fails at compile time.
MAX_SOURCE = 20_000


class ExpressionError(Exception):
    """An expression that does not compile or fails at run time; the message says what and where."""


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


class _Env(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context, op, left, right):
        if op == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is larger than {MAX_EXPONENT}")
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right * math.log2(abs(left)) > 4096:
                    raise SecurityError("the result of ** would be too large")
        elif op == "*":
            for seq, times in ((left, right), (right, left)):
                if _size(seq) and isinstance(times, int) and _size(seq) * times > MAX_SIZE:
                    raise SecurityError(f"repetition would build more than {MAX_SIZE} elements")
        elif op == "%" and isinstance(left, str):
            for width, precision in _PERCENT_SPEC.findall(left):
                if max(int(width or 0), int(precision or 0)) > MAX_INT_ARG:
                    raise SecurityError("format width is too large")
        elif op == "+" and _size(left) + _size(right) > MAX_SIZE:
            raise SecurityError(f"concatenation would build more than {MAX_SIZE} elements")
        return self.binop_table[op](left, right)

    def call(self, context, obj, *args, **kwargs):
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_INT_ARG:
                raise SecurityError(f"argument {arg} is larger than {MAX_INT_ARG}")
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _check_format_widths(value.__self__)
        return wrapped


def _check_format_widths(fmt: str) -> None:
    """Refuse `str.format` specs whose width or precision would allocate a huge string."""
    try:
        specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(fmt)]
    except ValueError:
        return  # a malformed format string fails on its own when called
    for spec in specs:
        if any(int(d) > MAX_INT_ARG for d in re.findall(r"\d+", spec)):
            raise SecurityError("format width is too large")


_PERCENT_SPEC = re.compile(r"%[-+ #0]*(\d*)(?:\.(\d+))?")


def _guard_filter(func: Callable, positions: tuple[int, ...]) -> Callable:
    """Wrap a built-in filter so that its size arguments are bounded."""

    def guarded(*args, **kwargs):
        for i in positions:
            if i < len(args) and isinstance(args[i], int) and abs(args[i]) > MAX_INT_ARG:
                raise SecurityError(f"argument {args[i]} is larger than {MAX_INT_ARG}")
        for v in kwargs.values():
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT_ARG:
                raise SecurityError(f"argument {v} is larger than {MAX_INT_ARG}")
        return func(*args, **kwargs)

    guarded.__dict__.update(func.__dict__)  # keep jinja's pass_context/pass_environment marks
    return guarded


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _make_env() -> _Env:
    env = _Env(
        undefined=StrictUndefined,
        block_start_string="\x00{%",  # statements are not part of the expression language
        block_end_string="%}\x00",
        comment_start_string="\x00{#",
        comment_end_string="#}\x00",
        autoescape=False,
    )
    env.globals.clear()  # no lipsum, cycler, joiner, namespace, dict
    env.globals.update(range=safe_range, now=_now)
    for name, positions in {"center": (1,), "indent": (1,), "wordwrap": (1,), "truncate": (1,),
                            "batch": (1,), "slice": (1,), "format": ()}.items():
        env.filters[name] = _guard_filter(env.filters[name], positions)
    return env


ENV = _make_env()


class Compiled:
    """One compiled param value. `evaluate(scope)` gives the value for one item's scope."""

    __slots__ = ("source", "_fn", "is_dynamic")

    def __init__(self, source: Any, fn: Callable[[Mapping[str, Any]], Any] | None):
        self.source = source
        self._fn = fn
        self.is_dynamic = fn is not None

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        if self._fn is None:
            return self.source
        try:
            return self._fn(scope)
        except SecurityError as exc:
            raise ExpressionError(f"expression not allowed: {exc}") from None
        except UndefinedError as exc:
            raise ExpressionError(f"{exc} in {_short(self.source)}") from None
        except RecursionError:
            raise ExpressionError(f"expression nests too deeply: {_short(self.source)}") from None
        except MemoryError:
            raise ExpressionError(f"expression needs too much memory: {_short(self.source)}") from None
        except ExpressionError:
            raise
        except Exception as exc:  # any error raised by user code inside the sandbox
            raise ExpressionError(f"{type(exc).__name__}: {exc} in {_short(self.source)}") from None


def _short(source: Any) -> str:
    text = str(source)
    return text if len(text) <= 80 else text[:77] + "..."


def _defined(value: Any) -> Any:
    """An undefined result (a missing key, a refused attribute) raises its error instead."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    return value


def _whole_expression(text: str) -> str | None:
    """The inner source if `text` is exactly one `{{ ... }}`, else None."""
    stripped = text.strip()
    if not (stripped.startswith("{{") and stripped.endswith("}}")):
        return None
    inner = stripped[2:-2]
    if "{{" in inner or "}}" in inner:
        return None
    return inner


def compile_value(value: Any) -> Compiled:
    """Compile a param value (any JSON) once; nested dicts and lists may hold expressions.

    Raises ExpressionError with the offending text on a syntax error.
    """
    if isinstance(value, str):
        return _compile_str(value)
    if isinstance(value, dict):
        parts = {k: compile_value(v) for k, v in value.items()}
        if not any(p.is_dynamic for p in parts.values()):
            return Compiled(value, None)
        return Compiled(value, lambda scope: {k: p.evaluate(scope) for k, p in parts.items()})
    if isinstance(value, list):
        parts_l = [compile_value(v) for v in value]
        if not any(p.is_dynamic for p in parts_l):
            return Compiled(value, None)
        return Compiled(value, lambda scope: [p.evaluate(scope) for p in parts_l])
    return Compiled(value, None)


def _compile_str(text: str) -> Compiled:
    if "{{" not in text:
        return Compiled(text, None)
    if len(text) > MAX_SOURCE:
        raise ExpressionError(f"expression is longer than {MAX_SOURCE} characters")
    inner = _whole_expression(text)
    try:
        if inner is not None:
            expr = ENV.compile_expression(inner, undefined_to_none=False)
            return Compiled(text, lambda scope: _defined(expr(**scope)))
        template = ENV.from_string(text)
        return Compiled(text, lambda scope: template.render(**scope))
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"bad expression syntax in {_short(text)}: {exc.message}") from None
    except RecursionError:
        raise ExpressionError(f"expression nests too deeply: {_short(text)}") from None


def check_syntax(value: Any) -> str | None:
    """The syntax error message of a param value, or None when it compiles."""
    try:
        compile_value(value)
    except ExpressionError as exc:
        return str(exc)
    return None


__all__ = ["Compiled", "ExpressionError", "compile_value", "check_syntax", "MAX_SIZE"]
