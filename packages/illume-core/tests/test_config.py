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
