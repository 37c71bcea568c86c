"""Config types checked from one schema: the type hints of the code the config builds.

Every config node with a ``_target_`` is checked against the signature of what it instantiates (a data module's,
a loss's, Lightning's ``Trainer``'s, an optimiser's ``__init__``), and the top-level keys against
:class:`TopLevel`. A wrong type stops the run before anything is built, with one line that names the key, what it
must be and a valid example, instead of a traceback from deep inside a library. Adding a parameter to a class is
all it takes for its config key to be checked: there is no list of keys to keep up to date.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simlearn.errors import UserError


@dataclasses.dataclass
class TopLevel:
    """The top-level keys of the train/eval configs that no class receives directly."""

    seed: int | None = 42
    compile: bool = False
    channels_last: bool = False
    ckpt_path: str | None = None


#: An example per type, for keys whose own default does not make one (None).
_EXAMPLES: dict[type, Any] = {int: 10, float: 0.1, bool: True, str: "NAME"}
_UNCHECKED = object()  # a hint this schema does not check (a class, a callable, Any)


def _simple(hint: Any) -> list[Any] | object:
    """The flat list of checkable alternatives of a type hint: types, ``None`` and Literal values."""
    origin = typing.get_origin(hint)
    if hint is type(None) or hint is None:
        return [None]
    if hint in (int, float, bool, str):
        return [hint]
    if hint in (Path, os.PathLike) or origin is os.PathLike:
        return [str]
    if origin is Literal:
        return [("literal", value) for value in typing.get_args(hint)]
    if origin in (Union, types.UnionType):
        members: list[Any] = []
        for arg in typing.get_args(hint):
            simple = _simple(arg)
            if simple is _UNCHECKED:
                continue  # e.g. Union[str, Accelerator]: a plain value must match one of the others
            members += simple
        return members or _UNCHECKED
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        return [("sequence", hint)]
    return _UNCHECKED


def _matches(value: Any, alternative: Any) -> bool:
    if alternative is None:
        return value is None
    if isinstance(alternative, tuple) and alternative[0] == "literal":
        return type(value) is type(alternative[1]) and value == alternative[1]
    if isinstance(alternative, tuple) and alternative[0] == "sequence":
        return isinstance(value, list | tuple | ListConfig)
    if alternative is bool:
        return isinstance(value, bool)
    if alternative is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if alternative is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, alternative)


def _describe(alternatives: list[Any]) -> str:
    literals = [a[1] for a in alternatives if isinstance(a, tuple) and a[0] == "literal"]
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    parts = [words[a] for a in alternatives if a in words]
    parts += ["a list" for a in alternatives if isinstance(a, tuple) and a[0] == "sequence"]
    if literals:
        parts.append(f"one of {literals}")
    if None in alternatives:
        parts.append("null")
    return " or ".join(dict.fromkeys(parts))


def _example(alternatives: list[Any], default: Any) -> Any:
    if (
        default is not inspect.Parameter.empty
        and default is not None
        and any(_matches(default, a) for a in alternatives)
    ):
        return default
    for alternative in alternatives:
        if isinstance(alternative, tuple) and alternative[0] == "literal":
            return alternative[1]
        if alternative in _EXAMPLES:
            return _EXAMPLES[alternative]
    return None


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def signature_hints(target: Any) -> dict[str, tuple[Any, Any]]:
    """``{parameter: (type hint, default)}`` of what a ``_target_`` builds: a function, or a class's ``__init__``
    along its base classes (subclasses that pass ``**kwargs`` on)."""
    functions = [target]
    if inspect.isclass(target):
        functions = [cls.__init__ for cls in target.__mro__ if "__init__" in vars(cls) and cls is not object]
    hints: dict[str, tuple[Any, Any]] = {}
    for function in functions:
        try:
            resolved = typing.get_type_hints(function)
            parameters = inspect.signature(function).parameters
        except Exception:  # unresolvable hints (forward references of optional packages): nothing to check
            continue
        for name, parameter in parameters.items():
            if name in resolved and name not in hints:
                hints[name] = (resolved[name], parameter.default)
    return hints


def _nodes(cfg: DictConfig, prefix: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every mapping node of the config with its dotted key (the root first)."""
    yield prefix, cfg
    for key in cfg:
        try:
            child = cfg._get_node(key)
        except OmegaConfBaseException:
            continue
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            yield from _nodes(child, f"{prefix}{key}.")


def _value(node: DictConfig, key: str) -> Any:
    try:
        value = node[key]
    except OmegaConfBaseException:  # an interpolation that cannot resolve here (e.g. no Hydra run): not ours
        return _UNCHECKED
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value


def check_value(key: str, value: Any, hint: Any, default: Any = inspect.Parameter.empty) -> None:
    """Raise a :class:`UserError` naming ``key`` when ``value`` does not fit ``hint``."""
    alternatives = _simple(hint)
    if alternatives is _UNCHECKED or any(_matches(value, a) for a in alternatives):
        return
    example = _example(alternatives, default)
    shown = f"{value!r} ({type(value).__name__})" if not isinstance(value, list) else f"{value}"
    hint_text = f"; e.g. {key}={_format(example)}" if example is not None else ""
    raise UserError(f"{key} must be {_describe(alternatives)}, got {shown}{hint_text}.")


def check_config(cfg: DictConfig) -> None:
    """Check every value the config gives a ``_target_`` (and the top-level keys) against the schema."""
    top = {field.name: (field.type, field.default) for field in dataclasses.fields(TopLevel)}
    top_hints = typing.get_type_hints(TopLevel)
    for name in top:
        if name in cfg and not OmegaConf.is_interpolation(cfg, name):
            value = _value(cfg, name)
            if value is not _UNCHECKED:
                check_value(name, value, top_hints[name], top[name][1])
    for prefix, node in _nodes(cfg):
        target = node.get("_target_") if "_target_" in node else None
        if not isinstance(target, str):
            continue
        try:
            hints = signature_hints(get_object(target))
        except Exception:  # an unknown _target_ is reported by instantiation, with Hydra's message
            continue
        for key in node:
            if not isinstance(key, str) or key.startswith("_") or key not in hints:
                continue
            if OmegaConf.is_interpolation(node, key):  # checked where it points to, under that key's name
                continue
            value = _value(node, key)
            if value is _UNCHECKED or isinstance(value, DictConfig):
                continue
            hint, default = hints[key]
            check_value(f"{prefix}{key}", value, hint, default)
