from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from illume_core import Config, ConfigError


@dataclass
class Inner(Config):
    depth: int = 2
    """Blocks."""


@dataclass
class Outer(Config):
    width: int = 8
    """Channels."""
    patch: tuple[int, int] = (4, 4)
    inner: Inner = field(default_factory=Inner)
    name: str | None = None

    presets: ClassVar[dict] = {"tiny": {"width": 4, "inner": {"depth": 1}}}


def test_round_trip_with_nested_and_tuples(tmp_path):
    config = Outer(width=16, patch=(2, 8), inner=Inner(depth=5), name="x")
    config.save(tmp_path / "config.json")
    loaded = Outer.load(tmp_path / "config.json")
    assert loaded == config and isinstance(loaded.patch, tuple) and isinstance(loaded.inner, Inner)


def test_presets_by_name_with_overrides():
    config = Outer.from_name("tiny", patch=(1, 1))
    assert config.width == 4 and config.inner.depth == 1 and config.patch == (1, 1)
    with pytest.raises(ConfigError, match="no preset 'huge'; presets: tiny"):
        Outer.from_name("huge")


def test_unknown_keys_and_wrong_class_are_errors(tmp_path):
    with pytest.raises(
        ConfigError, match="has no field.*widht.*valid fields: inner, name, patch, width"
    ):
        Outer.from_dict({"widht": 3})
    with pytest.raises(ConfigError, match="this config is a Inner, not a Outer"):
        Outer.from_dict(Inner().to_dict())
    with pytest.raises(ConfigError, match="no config file"):
        Outer.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"width": "lots"}, "Outer.width must be an integer, got 'lots'"),
        ({"width": True}, "Outer.width must be an integer, got True"),
        ({"width": 4.5}, "Outer.width must be an integer, got 4.5"),
        ({"patch": [4, "x"]}, r"Outer.patch\[1\] must be an integer"),
        ({"name": 3}, "Outer.name must be a string, got 3"),
        ({"inner": {"depth": None}}, "Inner.depth must be an integer, got None"),
    ],
)
def test_wrong_types_are_errors_naming_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        Outer.from_dict(data)


def test_right_types_load_as_before():
    config = Outer.from_dict({"width": 4, "patch": [2, 2], "name": None, "inner": {"depth": 3}})
    assert config == Outer(width=4, patch=(2, 2), inner=Inner(depth=3))
