"""Typed config dataclasses: config is the contract.

A model's config holds every constructor argument, serialises to `config.json`, loads back strictly
(an unknown or misspelt key is an error naming it, not silently dropped) and has presets by name:

    @dataclass
    class ViTConfig(Config):
        width: int = 64
        '''Channels of every token.'''
        presets: ClassVar[dict] = {"tiny": {"width": 32}}

    ViTConfig.from_name("tiny", depth=3)
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .checkpoint import atomic_write_json
from .files import read_json

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config file or dictionary does not fit its config class."""


_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _scalar_ok(value: Any, annotation: type) -> bool:
    if annotation is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):  # JSON true is no count and no rate
        return False
    if annotation is float:
        return isinstance(value, (int, float))
    return isinstance(value, annotation)


def _coerce(value: Any, annotation: Any, name: str = "value") -> Any:
    """Turns JSON values back into the annotated type (nested configs, tuples), checking scalars:
    a ConfigError names the field, the value and the type expected (`"codebook_size": "lots"`)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            if type(None) in typing.get_args(annotation):
                return None
            raise ConfigError(f"{name} must not be null")
        return _coerce(value, args[0], name) if len(args) == 1 else value
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise ConfigError(
                f"{name} must be one of {list(typing.get_args(annotation))}, got {value!r}"
            )
        return value
    if annotation in _SCALARS:
        if not _scalar_ok(value, annotation):
            raise ConfigError(f"{name} must be {_SCALARS[annotation]}, got {value!r}")
        return float(value) if annotation is float else value
    if isinstance(annotation, type) and issubclass(annotation, Config) and isinstance(value, dict):
        return annotation.from_dict(value)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if len(args) == len(value):
            return tuple(_coerce(v, a, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        return tuple(value)
    if origin is list and isinstance(value, list):
        (arg,) = typing.get_args(annotation) or (Any,)
        return [_coerce(v, arg, f"{name}[{i}]") for i, v in enumerate(value)]
    return value


@dataclasses.dataclass
class Config:
    """Base of every illume config dataclass."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"_class_name": type(self).__name__}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], **overrides: Any) -> C:
        data = {**data, **overrides}
        class_name = data.pop("_class_name", cls.__name__)
        if class_name != cls.__name__:
            raise ConfigError(f"this config is a {class_name}, not a {cls.__name__}")
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(fields))}"
            )
        hints = typing.get_type_hints(cls)
        return cls(
            **{k: _coerce(v, hints.get(k, Any), f"{cls.__name__}.{k}") for k, v in data.items()}
        )

    @classmethod
    def from_name(cls: type[C], name: str, **overrides: Any) -> C:
        """A preset by name (e.g. "tiny", "shapes"), with fields overridden by keyword."""
        if name not in cls.presets:
            raise ConfigError(
                f"{cls.__name__} has no preset {name!r}; presets: {', '.join(sorted(cls.presets)) or 'none'}"
            )
        return cls.from_dict(dict(cls.presets[name]), **overrides)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        try:
            data = read_json(path)
        except FileNotFoundError:
            raise ConfigError(f"no config file at {path}") from None
        except (OSError, ValueError) as err:
            raise ConfigError(str(err)) from None
        return cls.from_dict(data)
