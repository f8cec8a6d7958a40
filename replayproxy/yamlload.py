"""Loading a cassette's YAML fast and safely: libyaml's parser, a small constructor of our own.

PyYAML's CSafeLoader parses in C but composes a Node (with two Mark objects) per value and then
constructs in Python: ten times the parse itself. Cassettes are plain data, so we build Python
objects straight from libyaml's events. It is as safe as the safe loader: only the standard
scalar tags, `!!binary`, and the Python tags vcrpy's own loader reads as plain data are known
(`!!python/unicode` and `!!python/str` as text, `!!python/tuple` as a list, a recorded
`_io.BytesIO` or `builtins.iter` request body as its bytes, built from the content alone); any
other tag (`!!python/object...`, `!!python/name...`) is refused, never run.
Aliases are resolved by reference, and a document whose aliases would expand past a bound (a
"billion laughs" bomb) is refused.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from sys import intern
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import ScalarNode

try:
    _Parser: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - pyyaml built without libyaml
    _Parser = yaml.SafeLoader

#: How many values aliases may stand for, beyond the values written out.
MAX_ALIAS_EXPANSION = 1_000_000
#: How many characters of scalars aliases may stand for: this many times the document's own
#: size (plus a floor for small files), never more than the absolute cap. Aliases are resolved
#: by reference, but whoever reads the result (bodies encoded, headers joined, tables printed)
#: makes copies: a 1 MiB string aliased a thousand times must not become a GiB.
ALIAS_BYTES_FACTOR = 4
ALIAS_BYTES_FLOOR = 1 << 20
ALIAS_BYTES_CAP = 64 << 20
#: How deep collections may nest. Deeper documents are refused before anything recurses on
#: them: repr() would raise RecursionError, and PyYAML's C composer (used to find the line of
#: a schema error) would overflow the C stack and kill the process.
MAX_DEPTH = 100

_STR = "tag:yaml.org,2002:str"
_BINARY = "tag:yaml.org,2002:binary"
_MERGE = "tag:yaml.org,2002:merge"
_SCALAR_TAGS = frozenset(
    {
        _STR,
        _BINARY,
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:timestamp",
        "!",
    }
)
#: Python 2's string tags, in cassettes that vcrpy wrote under Python 2: plain text, nothing run.
_PY_STR_TAGS = frozenset({"tag:yaml.org,2002:python/unicode", "tag:yaml.org,2002:python/str"})
_CONTAINER_TAGS = frozenset({None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
#: Python tags vcrpy itself writes for plain data, read as that data (nothing is run): tornado's
#: headers are tuples, boto3's and file-like request bodies a BytesIO, iterator bodies an iter.
_TUPLE = "tag:yaml.org,2002:python/tuple"
_BYTESIO = "tag:yaml.org,2002:python/object/new:_io.BytesIO"
_ITER = "tag:yaml.org,2002:python/object/apply:builtins.iter"
_DATA_TAGS = frozenset({_TUPLE, _BYTESIO, _ITER})

_resolver = yaml.resolver.Resolver()
_constructor = yaml.constructor.SafeConstructor()
_NOTHING = object()


class _MergeKey(str):
    """The plain `<<` key (YAML's merge): a str, so it is still '<<' if used as a value."""


_MERGE_KEY = _MergeKey("<<")


class LoadError(yaml.YAMLError):
    """A YAML problem with the place it happened, shaped like PyYAML's own errors."""

    def __init__(self, problem: str, mark: Any):
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark

    def __str__(self) -> str:
        return self.problem


Convert = Mapping[str, Callable[[Any, int], Any]]


def load(text: str | bytes, convert: Convert | None = None) -> Any:
    """The single document in `text` as plain Python data (None for an empty stream).

    `convert` maps a top-level key whose value is a list to a function called on each item as
    soon as it is read (with its index): the item's plain data never has to coexist with the
    rest, so a large file loads in about the memory of what it becomes.
    """
    parser = _Parser(text)
    budget = min(ALIAS_BYTES_CAP, ALIAS_BYTES_FLOOR + ALIAS_BYTES_FACTOR * len(text))
    try:
        return _build(parser, convert or {}, budget)
    finally:
        parser.dispose()


def _build(parser: Any, convert: Convert, budget: int) -> Any:
    anchors: dict[str, tuple[Any, int, int]] = {}  # value, values in it, characters in it
    # [container, pending key, size, anchor, characters, tag, start mark]
    stack: list[list[Any]] = []
    expanded = 0
    expanded_bytes = 0
    documents = 0
    result: Any = None

    def add(value: Any, size: int, chars: int, event: Any) -> None:
        nonlocal result
        if not stack:
            result = value
            return
        top = stack[-1]
        top[2] += size
        top[4] += chars
        container = top[0]
        if container.__class__ is list:
            if convert and len(stack) == 2 and stack[0][1] in convert:
                value = convert[stack[0][1]](value, len(container))
            container.append(value)
        elif top[1] is _NOTHING:
            if isinstance(value, (list, dict)):
                raise LoadError("a mapping key must be a plain value", event.start_mark)
            top[1] = value
        else:
            key, top[1] = top[1], _NOTHING
            if key is _MERGE_KEY and isinstance(value, (dict, list)):
                for merged in value if isinstance(value, list) else [value]:
                    if isinstance(merged, dict):
                        for k, v in merged.items():
                            container.setdefault(k, v)
            else:
                container[key] = value

    while True:
        event = parser.get_event()
        cls = event.__class__
        if cls is ScalarEvent:
            value = _scalar(event)
            chars = len(event.value)
            if event.anchor:
                anchors[event.anchor] = (value, 1, chars)
            add(value, 1, chars, event)
        elif cls is MappingStartEvent or cls is SequenceStartEvent:
            tag = event.tag
            if tag not in _CONTAINER_TAGS and tag not in _DATA_TAGS:
                raise LoadError(_refused(tag), event.start_mark)
            container: dict[Any, Any] | list[Any] = {} if cls is MappingStartEvent else []
            stack.append([container, _NOTHING, 1, event.anchor, 0, tag, event.start_mark])
            if len(stack) > MAX_DEPTH:
                raise LoadError(
                    f"nested deeper than {MAX_DEPTH} levels; a cassette never needs that many",
                    event.start_mark,
                )
        elif cls is MappingEndEvent or cls is SequenceEndEvent:
            container, _, size, anchor, chars, tag, mark = stack.pop()
            if tag in _DATA_TAGS:
                container = _python_data(tag, container, mark)
            if anchor:
                anchors[anchor] = (container, size, chars)
            add(container, size, chars, event)
        elif cls is AliasEvent:
            if event.anchor not in anchors:
                raise LoadError(f"found undefined alias {event.anchor!r}", event.start_mark)
            value, size, chars = anchors[event.anchor]
            expanded += size
            expanded_bytes += chars
            if expanded > MAX_ALIAS_EXPANSION:
                raise LoadError(
                    f"aliases expand to more than {MAX_ALIAS_EXPANSION} values "
                    "(a YAML bomb?); a cassette never needs that many",
                    event.start_mark,
                )
            if expanded_bytes > budget:
                raise LoadError(
                    f"aliases expand to more than {budget} characters, {ALIAS_BYTES_FACTOR} "
                    "times the file's size (a YAML bomb?); a cassette never needs that many",
                    event.start_mark,
                )
            add(value, size, chars, event)
        elif cls is DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise LoadError("expected a single document, found another", event.start_mark)
        elif cls is StreamEndEvent:
            return result
        elif cls is DocumentEndEvent or cls is StreamStartEvent:
            continue


def _scalar(event: ScalarEvent) -> Any:
    value = event.value
    if len(value) <= 32:
        value = intern(value)  # header names, content types: one copy each, not one per use
    tag = event.tag
    if tag is None or tag == "!":
        if not event.implicit[0] or tag == "!":
            return value
        first = value[:1]
        if first and first not in _MAYBE_TYPED:
            return value
        tag = _resolver.resolve(ScalarNode, value, (True, False))
        if tag == _STR:
            return value
    elif tag in _PY_STR_TAGS:
        return value
    elif tag not in _SCALAR_TAGS:
        raise LoadError(_refused(tag), event.start_mark)
    if tag == _STR:
        return value
    if tag == _BINARY:
        try:
            return base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise LoadError("!!binary value is not base64", event.start_mark) from None
    if tag == _MERGE:
        return _MERGE_KEY  # a plain `<<`; a quoted '<<' is an ordinary key
    if tag == "tag:yaml.org,2002:timestamp":
        return value  # kept as written: the cassette reader wants text, not datetimes
    try:
        construct = _constructor.yaml_constructors[tag]
        mark = event.start_mark  # libyaml's Mark, the same fields as PyYAML's
        return construct(_constructor, ScalarNode(tag, value, mark))  # type: ignore[arg-type]
    except (ValueError, KeyError, yaml.constructor.ConstructorError):
        raise LoadError(
            f"cannot read {value!r} as {tag.rsplit(':', 1)[-1]}", event.start_mark
        ) from None


def _python_data(tag: str, value: Any, mark: Any) -> Any:
    """What vcrpy's loader makes of its Python tags, from their content alone."""
    if tag == _TUPLE:
        if not isinstance(value, list):
            raise LoadError("!!python/tuple must be a sequence", mark)
        return value
    # the object tags are mappings: BytesIO's `state` is (buffer, position, dict), iter's
    # `args` is ([chunks],)
    if not isinstance(value, dict):
        raise LoadError(f"!!{tag.split('2002:', 1)[1]} must be a mapping", mark)
    field = "state" if tag == _BYTESIO else "args"
    held = value.get(field)
    first = held[0] if isinstance(held, list) and held else b""
    if tag == _ITER:
        chunks = first if isinstance(first, list) else None
        if chunks is None or not all(isinstance(c, (bytes, str)) for c in chunks):
            raise LoadError("!!python/object/apply:builtins.iter must hold a list of chunks", mark)
        return b"".join(c.encode("utf-8") if isinstance(c, str) else c for c in chunks)
    if first is None:
        return b""
    if isinstance(first, str):
        return first.encode("utf-8")
    if not isinstance(first, bytes):
        raise LoadError("!!python/object/new:_io.BytesIO must hold its bytes in `state`", mark)
    return first


def _refused(tag: str) -> str:
    if tag.startswith(_PRE_1_0_TAGS):
        return (
            f"the tag {tag!r} is vcrpy's pre-1.0 layout; convert the cassette with "
            "`python -m vcr.migration FILE` (it rewrites FILE in place), then load it again"
        )
    return (
        f"could not determine a constructor for the tag {tag!r} "
        "(only plain YAML is allowed in a cassette; tags are never executed)"
    )


#: Tags only vcrpy before 1.0 wrote (its Request object and its header frozensets).
_PRE_1_0_TAGS = (
    "tag:yaml.org,2002:python/object:vcr.",
    "tag:yaml.org,2002:python/object/apply:__builtin__.frozenset",
    "tag:yaml.org,2002:python/object/apply:builtins.frozenset",
)

#: First characters with which a plain scalar may resolve to something other than a string.
_MAYBE_TYPED = frozenset(k for k in _resolver.yaml_implicit_resolvers if k)
