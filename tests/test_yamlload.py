"""The fast cassette loader agrees with PyYAML's safe loader and refuses what it must."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from replayproxy.yamlload import LoadError, load

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.binary(max_size=30)
)
data = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(data, st.sampled_from([None, True, False]))
def test_same_data_as_the_safe_loader(value: object, flow: bool | None) -> None:
    text = yaml.dump(value, Dumper=yaml.CSafeDumper, default_flow_style=flow, allow_unicode=True)
    assert load(text) == yaml.load(text, Loader=yaml.CSafeLoader) == value


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\nb: [1, 2.5, true, null, ~, '', 0x1f, 1_000, -3, .inf, yes, no, on, 010, 1:20]\n",
        "x: &a [1, 2]\ny: *a\nz: {<<: {m: 1}, n: 2}\n",
        "- !!str 12\n- !!int '7'\n- !!binary aGVsbG8=\n- \"quoted 1\"\n- 'single'\n",
        "",
    ],
)
def test_yaml_1_1_details(text: str) -> None:
    assert load(text) == yaml.load(text, Loader=yaml.CSafeLoader)


def test_timestamps_stay_text() -> None:
    assert load("when: 2026-01-01 10:00:00\n") == {"when": "2026-01-01 10:00:00"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("!!python/object/apply:os.system ['true']", "tags are never executed"),
        ("x: !!python/name:os.system", "tags are never executed"),
        ("x: !custom 1", "tags are never executed"),
        ("a: 1\n---\nb: 2\n", "single document"),
        ("x: *nowhere\n", "undefined alias"),
        ("x: !!binary '***'\n", "not base64"),
        ("x: !!int abc\n", "cannot read 'abc' as int"),
    ],
)
def test_refusals_name_the_line(text: str, message: str) -> None:
    with pytest.raises(LoadError, match=message) as err:
        load(text)
    assert err.value.problem_mark is not None


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(LoadError, match="YAML bomb"):
        load("\n".join(lines))
