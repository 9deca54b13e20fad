"""Typed Dagster run config generated from an analysis's pydantic ``Params`` model.

Every ``Params`` field becomes an *optional override* of the same type in the Launchpad, with its
description and its model default shown in the description (the override itself defaults to "unset",
so the job's own parameters apply unless a person overrides them). ``dry_run`` and ``force`` are added.

Dagster's ``Config`` cannot hold some pydantic types (Path, datetime, tuple, set, plain nested
``BaseModel``, non-optional unions): those are mapped to ones it can (str, list, nested ``Config``,
Any) and the merged values are re-validated by the real ``Params`` model inside the step, so nothing
the model would reject gets through.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import types
import typing
from pathlib import PurePath
from typing import Any, Literal, Optional, Union, get_args, get_origin

from dagster import Config
from pydantic import BaseModel, Field, TypeAdapter, create_model
from pydantic_core import PydanticUndefined

from analysis_wrapper.analysis import Analysis

_SCALARS = (str, int, float, bool)


def _is_union(origin: Any) -> bool:
    return origin is Union or origin is types.UnionType


def config_type_for(annotation: Any, owner: str) -> Any:
    """Map a pydantic annotation to one Dagster's Config can hold."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if annotation is Any or annotation in _SCALARS:
        return annotation
    if origin is typing.Annotated:
        return config_type_for(args[0], owner)
    if origin is Literal:
        # Dagster takes a Literal but not an Optional[Literal]: an Enum keeps the choices in the UI.
        # Its name must be the same in every process (webserver, daemon, run worker): no hash().
        digest = hashlib.sha256(repr(args).encode()).hexdigest()[:8]
        return enum.Enum(f"{owner}Choice_{digest}", {str(a): a for a in args})
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return annotation
        if issubclass(annotation, PurePath) or issubclass(annotation, (dt.datetime, dt.date, dt.time)):
            return str
        if issubclass(annotation, dt.timedelta):
            return float
        if issubclass(annotation, Config):
            return annotation
        if issubclass(annotation, BaseModel):
            return nested_config_class(annotation, f"{owner}{annotation.__name__}")
    if _is_union(origin):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return Optional[config_type_for(members[0], owner)]  # noqa: UP045 - built at run time
        return Any  # plain unions: Dagster cannot show them; Params re-validates the value
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set, frozenset):
        items = [a for a in args if a is not Ellipsis]
        if len(set(map(repr, items))) == 1:
            return list[config_type_for(items[0], owner)]  # type: ignore[misc]
        return list[Any]
    if origin is dict or annotation is dict:
        value = args[1] if len(args) == 2 else Any
        return dict[str, config_type_for(value, owner)]  # type: ignore[misc]
    return Any


def nested_config_class(model: type[BaseModel], name: str) -> type[Config]:
    """A nested ``Config`` mirroring a nested pydantic model field for field (defaults kept)."""
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        ftype = config_type_for(info.annotation, name)
        default = _config_default(info)
        fields[field_name] = (
            ftype,
            Field(default=... if info.is_required() else default, description=info.description),
        )
    return create_model(name, __base__=Config, **fields)  # type: ignore[call-overload,no-any-return]


def _config_default(info: Any) -> Any:
    """A field's default in the form its mapped config type holds (JSON mode; seconds for timedelta)."""
    default = info.get_default(call_default_factory=True)
    if default is PydanticUndefined or default is None or isinstance(default, enum.Enum):
        return default
    if isinstance(default, dt.timedelta):
        return default.total_seconds()
    return TypeAdapter(Any).dump_python(default, mode="json")


def _describe(info: Any) -> str:
    text = info.description
    if isinstance(text, tuple | list):  # ``description=("...",)``: the capsule template's own slip
        text = " ".join(map(str, text))
    parts = [text.rstrip(".") + "." if text else ""]
    if info.is_required():
        parts.append("Required by the analysis; unset keeps the job's value.")
    else:
        default = info.default if info.default is not PydanticUndefined else info.default_factory()
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        parts.append(f"Analysis default: {default!r}. Unset keeps the job's value.")
    return " ".join(p for p in parts if p)


def build_config_class(analysis: Analysis[Any, Any]) -> type[Config]:
    """The run-config class for ``analysis``'s result asset."""
    fields: dict[str, Any] = {}
    class_name = "".join(part.title() for part in analysis.name.split("_")) + "Config"
    for field_name, info in analysis.params.model_fields.items():
        ftype = config_type_for(info.annotation, class_name)
        fields[field_name] = (Optional[ftype], Field(default=None, description=_describe(info)))  # noqa: UP045
    fields["dry_run"] = (
        Optional[bool],  # noqa: UP045
        Field(
            default=None,
            description="Write results to the local dry-run area only, post nothing. Unset: DRY_RUN setting.",
        ),
    )
    fields["force"] = (
        bool,
        Field(default=False, description="Run even when the fingerprint is already recorded."),
    )
    model = create_model(class_name, __base__=Config, **fields)
    model.__doc__ = f"Run config of {analysis.name} {analysis.version}: optional parameter overrides."
    return model  # type: ignore[no-any-return]


def overrides_from_config(config: Config, analysis: Analysis[Any, Any]) -> dict[str, Any]:
    """The parameter overrides a person set in run config (unset fields left out)."""
    values = config.model_dump(mode="json")
    return {
        name: values[name]
        for name in analysis.params.model_fields
        if name in values and values[name] is not None
    }
