"""Expressions in node params: `{{ ... }}` evaluated in Jinja2's immutable sandbox.

A param whose whole value is one `{{ expr }}` keeps the expression's native type (number, list,
dict); any other string with `{{ }}` in it renders to a string. Only `{{ }}` is recognised:
statements (`{% %}`) and comments are plain text, so a param cannot define macros or loops.

The sandbox stops attribute walks (`__class__`, `__globals__`, ...). On top of it this module caps
what one operation can allocate (string and list repetition, `**`, padding and width arguments,
replace and join) and what one evaluation builds in all (MAX_TOTAL), so that a hostile expression
fails its node with a clear error instead of exhausting memory. On a dict, `a.b` reads the key `b`
before any method of that name, so `json.items` is the data's field.
Every template is compiled once (per flow version) and the compiled value is reused.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import string
import threading
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

#: Largest string, list or number of repetitions an expression may build.
MAX_SIZE = 1_000_000
#: Largest exponent `**` accepts, and the largest int any call may receive (widths, counts).
MAX_EXPONENT = 1_000
MAX_INT_ARG = MAX_SIZE
#: Longest expression source accepted; deeper nesting than this fails at compile time.
MAX_SOURCE = 20_000
#: What one evaluation may build in all (elements of the strings and lists its operators, calls and
#: filters return), so that many allowed steps (`range(10**5)|map('center', 10**6)`) cannot add up.
MAX_TOTAL = 10 * MAX_SIZE


class ExpressionError(Exception):
    """An expression that does not compile or fails at run time; the message says what and where."""


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


def _weight(value: Any, limit: int = MAX_TOTAL) -> int:
    """Elements a value holds, nested strings and lists included (a list repeating one long string
    weighs what its JSON would); stops counting past `limit`."""
    total, stack = 0, [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, (str, bytes)):
            total += len(v)
        elif isinstance(v, (list, tuple)):
            total += len(v)
            stack.extend(v)
        elif isinstance(v, dict):
            total += len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
    return total


class _Budget(threading.local):
    """What the evaluation running on this thread has built so far (`spent`: None outside one).

    Thread-local rather than a ContextVar: an evaluation never awaits, so nothing else runs on its
    thread until it ends, and setting a ContextVar and resetting it cost a fifth of a set node's
    step (about 0.9 us of 4.4)."""

    spent: int | None = None


_budget = _Budget()


def _charge(value: Any) -> Any:
    """Count what an operator, call or filter returned against the evaluation's MAX_TOTAL."""
    n = _size(value)
    if n:
        spent = _budget.spent
        if spent is not None:
            _budget.spent = spent = spent + n
            if spent > MAX_TOTAL:
                raise SecurityError(f"the expression builds more than {MAX_TOTAL} elements in all")
    return value


def _check_replace(s: Any, old: Any, new: Any, count: Any = None) -> None:
    s, old, new = str(s), str(old), str(new)
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    if len(s) + n * (len(new) - len(old)) > MAX_SIZE:
        raise SecurityError(f"replace would build more than {MAX_SIZE} characters")


def _check_join(sep: Any, parts: list) -> None:
    size = len(str(sep)) * max(len(parts) - 1, 0) + sum(_weight(p) for p in parts)
    if size > MAX_SIZE:
        raise SecurityError(f"join would build more than {MAX_SIZE} characters")


_NUMBERS = frozenset({int, float})


class _Env(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def getattr(self, obj, attribute):
        # JSON data first: `json.items` and `nodes["id"].items` are keys, not the dict's methods
        if type(obj) is dict and isinstance(attribute, str) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context, op, left, right):
        if op != "**" and type(left) in _NUMBERS and type(right) in _NUMBERS:
            return self.binop_table[op](left, right)  # arithmetic on numbers allocates nothing to cap
        if op == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is larger than {MAX_EXPONENT}")
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right * math.log2(abs(left)) > 4096:
                    raise SecurityError("the result of ** would be too large")
        elif op == "*":
            for seq, times in ((left, right), (right, left)):
                if _size(seq) and isinstance(times, int) and _weight(seq) * times > MAX_SIZE:
                    raise SecurityError(f"repetition would build more than {MAX_SIZE} elements")
        elif op == "%" and isinstance(left, str):
            _check_percent(left, right)
        elif op == "+" and _size(left) + _size(right) > MAX_SIZE:
            raise SecurityError(f"concatenation would build more than {MAX_SIZE} elements")
        return _charge(self.binop_table[op](left, right))

    def call(self, context, obj, *args, **kwargs):
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_INT_ARG:
                raise SecurityError(f"argument {arg} is larger than {MAX_INT_ARG}")
        owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", None)
        if isinstance(owner, str) and name == "replace":
            _check_replace(owner, *args, **kwargs)
        elif isinstance(owner, str) and name == "join" and args:
            args = (list(args[0]), *args[1:])
            _check_join(owner, args[0])
        return _charge(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        if not _check_format_widths(value.__self__):
            return wrapped

        def nested_widths_checked(*args, **kwargs):
            # a width given by a nested field ('{:>{}}') may come as a string of digits
            values = [*args, *kwargs.values()]
            values += [v for a in values if isinstance(a, Mapping) for v in a.values()]  # format_map
            for arg in values:
                if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_INT_ARG or \
                        isinstance(arg, str) and any(int(d) > MAX_INT_ARG for d in re.findall(r"\d+", arg)):
                    raise SecurityError("format width is too large")
            return wrapped(*args, **kwargs)
        return nested_widths_checked


def _check_format_widths(fmt: str) -> bool:
    """Refuse `str.format` specs whose width or precision would allocate a huge string.

    Returns True when a spec takes its width from a nested field, to be checked when called."""
    try:
        specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(fmt)]
    except ValueError:
        return False  # a malformed format string fails on its own when called
    for spec in specs:
        if any(int(d) > MAX_INT_ARG for d in re.findall(r"\d+", spec)):
            raise SecurityError("format width is too large")
    return any("{" in spec for spec in specs)


#: A printf-style conversion: optional (mapping key), flags, width and precision (digits or *).
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d*)(?:\.(\*|\d*))?")


def _check_percent(fmt: str, values: Any) -> None:
    """Refuse `fmt % values` when a width or precision (literal or `*`) would allocate a huge string."""
    args = values if isinstance(values, tuple) else (values,)
    for width, precision in _PERCENT_SPEC.findall(fmt):
        if "*" in (width, precision):  # the width comes from the arguments
            if any(isinstance(a, int) and abs(a) > MAX_INT_ARG for a in args):
                raise SecurityError("format width is too large")
        elif max(int(width or 0), int(precision or 0)) > MAX_INT_ARG:
            raise SecurityError("format width is too large")


def _guard_filter(func: Callable, positions: tuple[int, ...], check: Callable[[tuple, dict], tuple] | None = None) -> Callable:
    """Wrap a built-in filter so that its size arguments are bounded and its result is counted.

    `check(args)` may refuse the call before it allocates, and returns the args to call with."""

    def guarded(*args, **kwargs):
        for i in positions:
            if i < len(args) and isinstance(args[i], int) and abs(args[i]) > MAX_INT_ARG:
                raise SecurityError(f"argument {args[i]} is larger than {MAX_INT_ARG}")
        for v in kwargs.values():
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT_ARG:
                raise SecurityError(f"argument {v} is larger than {MAX_INT_ARG}")
        if check is not None:
            args = check(args, kwargs)
        return _charge(func(*args, **kwargs))

    guarded.__dict__.update(getattr(func, "__dict__", {}))  # keep jinja's pass_context/pass_environment marks
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
    sizes = {"center": (1,), "indent": (1,), "wordwrap": (1,), "truncate": (1,), "batch": (1,), "slice": (1,)}
    checks = {"replace": _replace_filter_args, "join": _join_filter_args, "format": _format_filter_args}
    for name in list(env.filters):
        env.filters[name] = _guard_filter(env.filters[name], sizes.get(name, ()), checks.get(name))
    return env


def _replace_filter_args(args: tuple, kwargs: dict) -> tuple:
    # replace(eval_ctx, s, old, new, count=None)
    if len(args) >= 4:
        _check_replace(*args[1:5], **kwargs)
    return args


def _format_filter_args(args: tuple, kwargs: dict) -> tuple:
    # format(value, *args, **kwargs) is `value % (kwargs or args)`
    if args:
        _check_percent(str(args[0]), tuple(args[1:]))
    return args


def _join_filter_args(args: tuple, kwargs: dict) -> tuple:
    # join(eval_ctx, value, d='', attribute=None): a generator is read once, here, and passed on as a list
    if len(args) < 2:
        return args
    parts = list(args[1])
    sep = kwargs.get("d", args[2] if len(args) > 2 else "")
    if kwargs.get("attribute", args[3] if len(args) > 3 else None) is None:
        _check_join(sep, parts)
    else:  # joins one field of each item: only the separator can multiply
        _check_join(sep, [None] * len(parts))
    return (args[0], parts, *args[2:])


ENV = _make_env()


class Compiled:
    """One compiled param value. `evaluate(scope)` gives the value for one item's scope."""

    __slots__ = ("source", "_fn", "is_dynamic", "_parts")

    def __init__(self, source: Any, fn: Callable[[Mapping[str, Any]], Any] | None, parts: list[Compiled] = ()):
        self.source = source
        self._fn = fn
        self.is_dynamic = fn is not None
        #: For a dict or list: its compiled members, used to name the one that failed.
        self._parts = parts

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        if self._fn is None:
            return self.source
        outer, _budget.spent = _budget.spent, 0  # (saved: a failure evaluates each part alone, nested)
        try:
            return self._fn(scope)
        except Exception as exc:
            for part in self._parts:  # only on failure: evaluate each member alone for a precise message
                part.evaluate(scope)
            raise _explain(exc, self.source) from None
        finally:
            _budget.spent = outer


def _explain(exc: BaseException, source: Any) -> ExpressionError:
    if isinstance(exc, ExpressionError):
        return exc
    if isinstance(exc, SecurityError):
        return ExpressionError(f"expression not allowed: {exc}")
    if isinstance(exc, UndefinedError):
        return ExpressionError(f"{exc} in {_short(source)}")
    if isinstance(exc, RecursionError):
        return ExpressionError(f"expression nests too deeply: {_short(source)}")
    if isinstance(exc, MemoryError):
        return ExpressionError(f"expression needs too much memory: {_short(source)}")
    return ExpressionError(f"{type(exc).__name__}: {exc} in {_short(source)}")  # raised by user code in the sandbox


def _short(source: Any) -> str:
    text = str(source)
    return text if len(text) <= 80 else text[:77] + "..."


def _expression(template: Any) -> Callable[[Mapping[str, Any]], Any]:
    """Evaluate a compiled `compile_expression` template without its per-call overhead.

    Jinja's TemplateExpression builds each context from a ChainMap of globals; building it from
    a plain dict, as here, makes an evaluation about twice as fast. The result is what the
    expression assigned to `result`, as in TemplateExpression.
    """
    glob = dict(template.globals)
    root = template.root_render_func
    eval_ctx = EvalContext(ENV, None)  # only `{% autoescape %}` changes it, and statements are disabled
    globals_keys = frozenset(glob)
    new = _Context.__new__

    def evaluate(scope: Mapping[str, Any]) -> Any:
        context = new(_Context)
        context.parent, context.vars, context.environment = {**glob, **scope}, {}, ENV
        context.eval_ctx, context.exported_vars, context.name = eval_ctx, set(), None
        context.globals_keys, context.blocks = globals_keys, {}
        for _ in root(context):
            pass
        return _defined(context.vars["result"])
    return evaluate


class _Context(Context):
    """Jinja's Context, filled in by `_expression` without running its constructor."""


def _defined(value: Any) -> Any:
    """An undefined result (a missing key, a refused attribute) raises its error instead."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, str) and type(value) is not str:
        return str(value)  # Markup (from |tojson, |safe, ...) is a str subclass JSON encoders refuse
    return value


def _whole_expression(text: str) -> str | None:
    """The inner source if `text` is exactly one `{{ ... }}`, else None."""
    stripped = text.strip()
    if not (stripped.startswith("{{") and stripped.endswith("}}")):
        return None
    inner = stripped[2:-2]
    if "{{" in inner or "}}" in inner:
        try:  # one expression whose literals hold braces, e.g. {{ {'a': {'b': 1}} }}, or two expressions?
            ENV.compile_expression(inner)
        except TemplateSyntaxError:
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
        # the parts' raw functions, so that one evaluation has one budget and one error handler
        fields = [(k, p._fn, p.source) for k, p in parts.items()]

        def evaluate_dict(scope: Mapping[str, Any]) -> dict[str, Any]:
            out = {}  # a loop, not a comprehension: one frame less per evaluation
            for k, fn, v in fields:
                out[k] = fn(scope) if fn else v
            return out
        return Compiled(value, evaluate_dict, [p for p in parts.values() if p.is_dynamic])
    if isinstance(value, list):
        members = [compile_value(v) for v in value]
        if not any(p.is_dynamic for p in members):
            return Compiled(value, None)
        items = [(p._fn, p.source) for p in members]
        return Compiled(value, lambda scope: [fn(scope) if fn else v for fn, v in items],
                        [p for p in members if p.is_dynamic])
    return Compiled(value, None)


def _compile_str(text: str) -> Compiled:
    if "{{" not in text:
        return Compiled(text, None)
    if len(text) > MAX_SOURCE:
        raise ExpressionError(f"expression is longer than {MAX_SOURCE} characters")
    try:
        inner = _whole_expression(text)
        if inner is not None:
            return Compiled(text, _expression(ENV.compile_expression(inner, undefined_to_none=False)._template))
        template = ENV.from_string(text)
        template.globals = dict(template.globals)  # a plain dict: each render copies it cheaply
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
