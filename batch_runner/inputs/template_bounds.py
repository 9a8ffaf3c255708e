"""Bounds on rendering one row's templates: time, size, memory, and a stop request.

A job's template is code that runs on every row, in this process; one row must not be able to
hold the run up or eat the machine. Three layers, each cheap on the hot path:

- size: output is counted as the template yields it, and the sandbox's hooks (operators,
  calls, filters, attribute and item lookups) refuse a value past ``max_chars`` *before* it is
  built where its size can be told from the operands ('x' * 10**10, '%9999999999s', center(...)),
  and after it is built otherwise;
- time and memory: while a batch renders in the main thread, an interval timer (SIGALRM, every
  ``TICK_S``) checks the row's deadline, the process's resident memory and a stop request, and
  raises between two bytecodes of the template: this also stops loops that print nothing and
  output captured in ``{% set %}`` blocks, which no hook sees. The hooks check the deadline too,
  for renders outside the main thread, where no timer can be set;
- a stop request (SIGTERM/SIGINT) ends a render within a tick, as ``RenderStopped``.
"""

from __future__ import annotations

import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

TICK_S = 0.1  # how often the timer checks a render: a stop is honoured within about this
_SIZED = (str, bytes, bytearray, list, tuple, dict)
# the width and precision of '%-10.5s' and of '{0:>10.5}'
_FORMAT_WIDTH = re.compile(r"%[-+ #0]*(\d*)(?:\.(\d+))?|\{[^{}:]*:[^{}\d]*(\d*)(?:[,_]?\.(\d+))?")
_WIDTH_METHODS = frozenset(["center", "ljust", "rjust", "zfill", "expandtabs"])
_WIDTH_FILTERS = frozenset(["center", "indent", "batch", "slice", "tojson", "wordwrap"])
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class RenderLimit(Exception):
    """A row's template went past a bound; the row becomes a ``template_error`` row."""


class RenderStopped(BaseException):
    """A stop was requested while a batch rendered; its rows run again on resume. A BaseException,
    as KeyboardInterrupt is: no ``except Exception`` of a template's caller may turn it into a row error."""


@dataclass(frozen=True)
class RenderBounds:
    timeout_s: float
    max_chars: int

    @property
    def max_memory(self) -> int:
        """Bytes a row's render may add to the process (a str of max_chars takes up to 4 per char,
        and a render holds a few copies)."""
        return max(256 << 20, 16 * self.max_chars)


def _rss() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None  # not Linux: time and size still bound the render


class RenderGuard:
    """The running row's deadline, checked by the timer and by the sandbox's hooks."""

    def __init__(self, bounds: RenderBounds) -> None:
        self.bounds = bounds
        self.deadline = math.inf  # of the row rendering now; inf between rows
        self.stopping: Callable[[], bool] = lambda: False  # set by the pipeline: a stop was requested
        self._row = 0  # counts rows, so that a tick knows whether it saw this row before
        self._seen: tuple[int, int] | None = None  # (row, resident bytes) at the row's first tick
        self._armed = False

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimit(f"rendering took longer than {self.bounds.timeout_s:g} s (prompt.render_timeout_s)")

    def __enter__(self) -> None:
        """``with guard:`` bounds one row's render, its deadline from here (a plain context manager:
        it runs per row, on the hot path)."""
        self._row += 1
        self.deadline = time.monotonic() + self.bounds.timeout_s

    def __exit__(self, *exc) -> None:
        self.deadline = math.inf

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The timer, for the length of a batch's rendering (main thread only; nested: once)."""
        main = threading.current_thread() is threading.main_thread()
        if self._armed or not main or not hasattr(signal, "setitimer"):
            yield
            return
        old = signal.signal(signal.SIGALRM, self._tick)
        self._armed, started = True, time.monotonic()
        old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, TICK_S, TICK_S)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._armed = False
            signal.signal(signal.SIGALRM, old)
            if old_delay:  # an alarm of the embedding program (a test timeout...) still comes, on time
                left = max(old_delay - (time.monotonic() - started), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, left, old_interval)

    def _tick(self, signum, frame) -> None:
        if self.stopping():
            raise RenderStopped("a stop was requested while rendering")
        if self.deadline == math.inf:
            return
        self.check_time()
        rss = _rss()
        if rss is None:
            return
        if self._seen is None or self._seen[0] != self._row:
            self._seen = (self._row, rss)
        elif rss - self._seen[1] > self.bounds.max_memory:
            raise RenderLimit(f"rendering took more than {self.bounds.max_memory >> 20} MiB of memory "
                              "(see prompt.max_render_chars)")


class BoundedEnvironment(SandboxedEnvironment):
    """Jinja's sandbox with the size and time bounds of ``guard`` on every operator, call, filter
    and lookup that could build a large value."""

    intercepted_binops = frozenset(["*", "**", "%", "+"])

    def __init__(self, guard: RenderGuard, **options: Any) -> None:
        super().__init__(**options)
        self.guard = guard
        self.filters = {name: self._bounded_filter(name, f) for name, f in self.filters.items()}

    # -- size ---------------------------------------------------------------------------------
    def _too_big(self, size: float, what: str) -> None:
        if size > self.guard.bounds.max_chars:
            raise RenderLimit(f"{what} would hold {size:,.0f} items, more than prompt.max_render_chars "
                              f"({self.guard.bounds.max_chars:,})")

    def _check_result(self, value: Any) -> Any:
        if isinstance(value, _SIZED):
            self._too_big(len(value), "a value")
        return value

    def _check_numbers(self, args: tuple, kwargs: dict) -> None:
        """A width or count given as a number past the bound (center(10**10), batch(10**10))."""
        for a in (*args, *kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool):
                self._too_big(abs(a), "a width or count")

    def _check_format(self, fmt: Any, args: Any = ()) -> None:
        """'%9999999999s', '%*s' or '{:>9999999999}': widths given to a format string."""
        if not isinstance(fmt, str) or len(fmt) > 100_000:
            return
        for number in (n for found in _FORMAT_WIDTH.findall(fmt) for n in found if n):
            self._too_big(int(number) if len(number) < 16 else math.inf, "a format width")
        if "*" in fmt:
            self._check_numbers(args if isinstance(args, tuple) else (args,), {})

    def _check_replace(self, s: Any, old: Any, new: Any) -> None:
        if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
            hits = s.count(old) if old else len(s) + 1
            self._too_big(len(s) + hits * max(len(new) - len(old), 0), "a replacement")

    def _check_join(self, sep: Any, items: Any) -> None:
        if isinstance(sep, str) and hasattr(items, "__len__"):
            self._too_big(len(sep) * len(items), "a join")

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        self.guard.check_time()
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, _SIZED) and isinstance(n, int):
                self._too_big(len(seq) * max(n, 0), "a repeated value")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            self._too_big(left.bit_length() * right / 3.3, "a power's digits")
        elif operator == "%":
            self._check_format(left, right)
        elif operator == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
            self._too_big(len(left) + len(right), "a concatenation")
        return self._check_result(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's signature)
        __self.guard.check_time()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, (str, bytes, list)):  # a method of a value: widths, replace, join, format
            name = getattr(__obj, "__name__", "")
            if name in _WIDTH_METHODS:
                __self._check_numbers(args, kwargs)
            elif name == "replace" and len(args) >= 2:
                __self._check_replace(owner, args[0], args[1])
            elif name == "join" and args:
                __self._check_join(owner, args[0])
            elif name in ("format", "format_map"):
                __self._check_format(owner)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(owner, list):  # l.extend(l) grows the list in place
            __self._check_result(owner)
        return __self._check_result(result)

    def _bounded_filter(self, name: str, f: Callable) -> Callable:
        skip = 2 if hasattr(f, "jinja_pass_arg") else 1  # (context,) value, then the filter's arguments

        def bounded(*args: Any, **kwargs: Any) -> Any:
            self.guard.check_time()
            value, rest = args[skip - 1] if len(args) >= skip else None, args[skip:]
            if name in _WIDTH_FILTERS:
                self._check_numbers(rest, kwargs)
                if name == "indent" and rest and isinstance(rest[0], str) and isinstance(value, str):
                    self._too_big(len(rest[0]) * (value.count("\n") + 1), "an indented text")
            elif name == "replace" and len(rest) >= 2:
                self._check_replace(value, rest[0], rest[1])
            elif name == "join":
                self._check_join(rest[0] if rest else kwargs.get("d", ""), value)
            elif name == "format":
                self._check_format(value, rest)
            return self._check_result(f(*args, **kwargs))

        bounded.__dict__.update(getattr(f, "__dict__", {}))  # Jinja's pass_context... markers
        return bounded

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.guard.check_time()
        return self._check_result(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.guard.check_time()
        return self._check_result(super().getitem(obj, argument))

    def concat(self, parts: list) -> str:  # output captured by {% set %} blocks and macros
        self._too_big(sum(len(p) for p in parts), "a captured block")
        return "".join(parts)


def render(template: jinja2.Template, guard: RenderGuard, variables: dict[str, Any]) -> str:
    """The template's text, counted as it is produced: past max_chars, RenderLimit."""
    parts, size, limit = [], 0, guard.bounds.max_chars
    # Template.generate without its wrapper (which only rewrites tracebacks): a row's error is a message
    for chunk in template.root_render_func(template.new_context(dict(variables))):
        size += len(chunk)
        if size > limit:
            raise RenderLimit(f"the rendered text is longer than prompt.max_render_chars ({limit:,})")
        parts.append(chunk)
    return "".join(parts)
