r"""User-supplied regexes (from a config file, perhaps auto-loaded from the current folder),
compiled with RE2: matching takes time linear in the input, so no pattern can stall the proxy
on a crafted path (Python's `re` backtracks: `^/(\w+\s?)*$` took 3 s on a 26-byte path).

RE2's syntax is Python's less backreferences and lookaround; `\w`, `\d` and `\s` are ASCII.
A pattern RE2 refuses is a config error naming the field.
"""

from __future__ import annotations

from typing import Any

import re2

from .errors import ConfigError

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the reason goes into our one-line error, not to stderr


def compile_guarded(pattern: str, where: str) -> Any:
    """The RE2 pattern (finditer, span and groups as in `re`), or ConfigError naming `where`."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(
            exc.args[0], bytes) else str(exc)
        raise ConfigError(
            f"{where}: {pattern[:80]!r} is not a regex this tool runs ({reason}); RE2 syntax: "
            "no backreferences or lookaround, so matching stays linear in the input"
        ) from None
