"""Known credential formats: detect-secrets' detectors, run through RE2 so any input is linear.

detect-secrets (Yelp) keeps the list of formats (Stripe, GitHub, GitLab, Slack, JWT, Telegram,
AWS, private keys, ...). Its patterns are Python regular expressions written for source files;
three of them backtrack quadratically on crafted text (`eyJ-` repeated: 1.2 s for 64 KiB,
OpenAI's `sk-` pattern: 11 s), so each is compiled with RE2, which matches in linear time.
Patterns RE2 cannot take (lookbehind) are the keyword-assignment ones meant for source code;
names are judged in `leaks.py` instead. `(?!\\w)` endings are checked after the match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

import re2

#: Detectors left out, and why.
EXCLUDED = {
    "IPPublicDetector": "an IP address is not a credential",
    "TwilioKeyDetector": "account and API key SIDs (AC..., SK...) are ids, in every Twilio URL",
    "KeywordDetector": "names are judged by leaks.py, per location",
}

#: Formats detect-secrets 1.5 does not know, seen in API traffic (each is a vendor's documented
#: prefix, followed by the random part).
EXTRA = {
    "Stripe Test Key": r"(?:sk|rk)_test_[0-9a-zA-Z]{24,}",
    "Stripe Webhook Secret": r"whsec_[A-Za-z0-9+/=]{24,}",
    "Google API Key": r"AIza[0-9A-Za-z_-]{35}",
    "GitHub Fine-grained Token": r"github_pat_[A-Za-z0-9_]{60,}",
    "Anthropic API Key": r"sk-ant-[A-Za-z0-9_-]{60,}",
    "Notion Token": r"ntn_[A-Za-z0-9]{40,}",
    "npm Token": r"npm_[A-Za-z0-9]{36}",
}


#: Matches of one format reported per text at most (a body of a million fake keys is one leak).
MAX_PER_TEXT = 100


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    pattern: re2._Regexp
    word_end: bool  # the library's pattern ended in (?!\w): checked after the match


@cache
def formats() -> tuple[tuple[Format, ...], re2._Regexp]:
    """Every format, and one pattern that finds any of them (the usual answer is no)."""
    import detect_secrets.plugins as package
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.base import BasePlugin, RegexBasedDetector

    del package
    found: list[Format] = []
    # declared: the library types its answer with a TypeVar bound to nothing
    classes: Iterable[type[BasePlugin]] = get_mapping_from_secret_type_to_class().values()
    for plugin in classes:
        if not issubclass(plugin, RegexBasedDetector) or plugin.__name__ in EXCLUDED:
            continue
        detector = plugin()
        for regex in detector.denylist:
            compiled = _re2(regex.pattern, bool(regex.flags & re.IGNORECASE))
            if compiled is not None:
                found.append(Format(detector.secret_type, *compiled))
    for name, pattern in EXTRA.items():
        compiled = _re2(pattern, False)
        assert compiled is not None
        found.append(Format(name, *compiled))
    anyone = re2.compile(b"|".join(b"(?:" + f.pattern.pattern + b")" for f in found), _options())
    return tuple(found), anyone


def _re2(pattern: str, ignore_case: bool) -> tuple[object, bool] | None:
    word_end = pattern.endswith(r"(?!\w)")
    if word_end:
        pattern = pattern[: -len(r"(?!\w)")]
    # RE2 caps counted repetitions at 1000 (and large ones bloat its DFA): "at least n" instead
    pattern = re.sub(r"\{(\d+),(\d{3,})\}", lambda m: "{" + m.group(1) + ",}", pattern)
    if ignore_case:
        pattern = f"(?i:{pattern})"
    try:
        return re2.compile(pattern.encode(), _options()), word_end
    except re2.error:
        return None  # lookbehind: the keyword-assignment patterns for source code


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 64 << 20  # room for the DFA of the combined pattern
    return options


def find(text: str) -> Iterator[tuple[str, str]]:
    """(format name, the credential) for each known format in `text`, linear in its length."""
    if len(text) < 16:  # shorter than any format
        return
    table, anyone = formats()
    data = text.encode("utf-8", "surrogatepass")  # once: RE2 on str re-encodes per search
    if anyone.search(data) is None:
        return
    for fmt in table:
        pos = 0
        for _ in range(MAX_PER_TEXT):
            m = fmt.pattern.search(data, pos)
            if m is None:
                break
            pos = max(m.end(), pos + 1)
            if fmt.word_end and m.end() < len(data) and _word(data[m.end()]):
                continue
            if fmt.name == "JSON Web Token" and not _jwt(m[0].decode("ascii", "replace")):
                continue
            # a pattern that captures after some context (`://user:(password)@`) names the
            # secret by its group; otherwise the match, carried on to the end of its token (a
            # pattern may stop short of it: a JWT's signature, a longer key)
            start, end = m.span()
            if m.groups():
                inner = [m.span(i) for i in range(1, len(m.groups()) + 1) if m[i]]
                later = [span for span in inner if span[0] > start]
                if later:
                    start, end = max(later, key=lambda span: span[1] - span[0])
            if fmt.name == "Private Key":  # the whole block, BEGIN to END, not its first line
                begin = data.rfind(b"-----", max(0, start - 8), start)
                block = _PEM.match(data, begin if begin >= 0 else start)
                if block:
                    start, end = block.span()
                pos = max(pos, end)
            elif start == m.start():
                run = _TOKEN_RUN.match(data, end)
                assert run is not None  # {0,4096}: matches anywhere, the empty string at least
                end = run.end()
                pos = max(pos, end)  # the next search starts after this token: linear
            raw = data[start:end].decode("utf-8", "replace")
            secret = _CONTEXT.sub("", raw.strip("\"' \t\r\n:"))
            if secret:
                yield fmt.name, secret


_CONTEXT = re.compile(r"^[A-Za-z]{2,32}=")  # AccountKey=...: the name is not the secret


_TOKEN_RUN = re.compile(rb"[A-Za-z0-9_=-]{0,4096}")
_PEM = re.compile(
    rb"-*BEGIN [A-Z0-9 ]{0,40}-----[A-Za-z0-9+/=\s\\:,-]{0,65536}?-----END [A-Z0-9 ]{0,40}-----"
)

def names() -> list[str]:
    return sorted({f.name for f in formats()[0]})


def _word(byte: int) -> bool:
    return chr(byte).isalnum() or byte == 0x5F


def _jwt(token: str) -> bool:
    from detect_secrets.plugins.jwt import JwtTokenDetector

    return JwtTokenDetector.is_formally_valid(token)
