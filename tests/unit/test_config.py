"""Config plumbing: typed construction from dicts with field-naming errors, overrides, YAML round trip."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from btp_ray.config_io import (
    ConfigError,
    deep_merge,
    dump_yaml,
    from_dict,
    load_yaml,
    parse_override,
    set_path,
    to_dict,
)


class Colour(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"Inner.rate must be in [0, 1], got {self.rate}")


@dataclass(frozen=True)
class Outer:
    count: int = 1
    flag: bool = False
    colour: Colour = Colour.RED
    label: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_from_dict_builds_nested_typed_values() -> None:
    cfg = from_dict(Outer, {"count": "3", "flag": "yes", "colour": "blue", "inner": {"rate": "0.25", "names": "a,b"}})
    assert cfg == Outer(count=3, flag=True, colour=Colour.BLUE, inner=Inner(rate=0.25, names=("a", "b")))


@pytest.mark.parametrize(
    ("data", "field_path", "fragment"),
    [
        ({"count": "many"}, "count", "integer"),
        ({"count": 1.5}, "count", "integer"),
        ({"flag": "maybe"}, "flag", "true or false"),
        ({"colour": "green"}, "colour", "red, blue"),
        ({"inner": {"rate": 2.0}}, "inner.rate", "Inner.rate must be in [0, 1]"),
        ({"inner": {"speed": 1}}, "inner.speed", "unknown field"),
        ({"cuont": 1}, "cuont", "valid fields of Outer: colour, count, flag, inner, label"),
        ({"inner": 3}, "inner", "expected a mapping"),
        ({"count": None}, "count", "must not be null"),
    ],
)
def test_from_dict_errors_name_the_field(data: dict, field_path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    assert info.value.field == field_path
    assert fragment in str(info.value)


def test_overrides_and_merge() -> None:
    assert parse_override("inner.rate=0.1") == ("inner.rate", 0.1)
    assert parse_override("inner.names=[x, y]") == ("inner.names", ["x", "y"])
    assert parse_override("label=hello world") == ("label", "hello world")
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override("nonsense")
    data: dict = {}
    set_path(data, "inner.rate", 0.3)
    set_path(data, "count", 2)
    assert data == {"inner": {"rate": 0.3}, "count": 2}
    assert deep_merge({"inner": {"rate": 0.1, "names": ["a"]}}, data) == {
        "inner": {"rate": 0.3, "names": ["a"]},
        "count": 2,
    }


def test_yaml_round_trip_and_errors(tmp_path: Path) -> None:
    cfg = Outer(count=4, colour=Colour.BLUE, inner=Inner(names=("p",)))
    path = tmp_path / "cfg.yaml"
    dump_yaml(cfg, path)
    assert from_dict(Outer, load_yaml(path)) == cfg
    assert to_dict(cfg)["colour"] == "blue"
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=f"{bad}.*invalid YAML"):
        load_yaml(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_yaml(scalar)
