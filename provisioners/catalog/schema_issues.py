"""pydantic validation errors -> :class:`~provisioners.catalog.errors.CatalogIssue`: the YAML
line:column of the field, a message in the catalog's words, what was expected (the field's
``description`` unless the validator said more) and a fix."""
from __future__ import annotations

import difflib
import math
import re
import types
import typing
from typing import Annotated, Any

import yaml
from pydantic import BaseModel

from provisioners.catalog.errors import CatalogIssue, show
from provisioners.catalog.model import Catalog
from provisioners.catalog.yamlpos import Loc, loc_to_path, position


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model class whose fields are the keys at ``loc`` (``("vms", 0, "gpu")`` -> GpuSpec)."""
    model: Any = Catalog
    i = 0
    while i < len(loc):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        info = model.model_fields.get(str(loc[i]))
        if info is None:
            return None
        tp = _unwrap(info.annotation)
        i += 1
        while typing.get_origin(tp) in (list, dict):
            tp = _unwrap(typing.get_args(tp)[-1])
            i += 1  # the list index / dict key
        model = tp
        if i > len(loc):
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_description(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    if model is not None and loc and str(loc[-1]) in model.model_fields:
        return model.model_fields[str(loc[-1])].description or ""
    return ""


_TYPE_NAMES = {"int_type": "an integer", "int_from_float": "an integer", "bool_type": "true or false",
               "string_type": "a string", "float_type": "a number", "list_type": "a list",
               "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping"}


def _must_be(error: dict[str, Any]) -> str:
    return error["msg"].replace("Input should be ", "must be ")


def issue_from_pydantic(error: dict[str, Any], root: yaml.Node) -> CatalogIssue:
    """One entry of ``ValidationError.errors()`` as a :class:`CatalogIssue` positioned in the
    YAML node tree ``root``."""
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    path = loc_to_path(loc)
    expected = ctx.get("expected") or _field_description(loc)
    fix = ctx.get("fix", "")
    name = str(loc[-1]) if loc else ""

    if kind == "missing":
        line, col = position(root, loc)
        parent = loc_to_path(loc[:-1]) or "the top level"
        return CatalogIssue(path, line, col, f"required key '{name}' is missing", expected,
                            f"add '{name}: ...' under {parent}")
    if kind == "extra_forbidden":
        line, col = position(root, loc, at_key=True)
        model = _model_at(loc[:-1])
        valid = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        fix = f"did you mean '{close[0]}'?" if close else "remove it"
        return CatalogIssue(path, line, col, f"unknown key '{name}'",
                            "one of: " + ", ".join(valid) if valid else "no such key", fix)

    line, col = position(root, loc)
    value = error.get("input")
    if ctx.get("message"):
        message = ctx["message"]
    elif kind in _TYPE_NAMES:
        message = f"{show(value)} is not {_TYPE_NAMES[kind]}"
        model = _model_at(loc) if kind in ("model_type", "model_attributes_type", "dict_type") else None
        if model is not None and not expected:
            expected = "a mapping with keys " + ", ".join(model.model_fields)
        if kind == "int_from_float" or (kind == "int_type" and isinstance(value, float)):
            fix = fix or f"write a whole number, e.g. {math.ceil(value) if isinstance(value, float) else 1}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        message = f"{show(value)} is out of range: {_must_be(error)}"
    elif kind == "literal_error":
        message = f"{show(value)} is not allowed: {_must_be(error)}"
    elif kind == "too_short" and not value:
        message = "has no entries"
        fix = fix or "add at least one entry"
    elif kind in ("too_short", "too_long"):
        message = error["msg"].replace("List should have", "needs").replace("Dictionary should have", "needs") \
            .replace("String should have", "needs").replace(" after validation", "")
    else:
        message = f"{show(value)}: {error['msg']}"
    return CatalogIssue(path, line, col, message, expected, fix)


def schema_issues(errors: list[dict[str, Any]], root: yaml.Node, skip_paths: set[str]) -> list[CatalogIssue]:
    """The issues for ``ValidationError.errors()``: one per field path (the first error wins),
    none for paths in ``skip_paths`` (already reported, e.g. as secret-looking keys)."""
    issues: list[CatalogIssue] = []
    seen: set[str] = set()
    for error in errors:
        if error["type"] == "invalid_key":
            continue  # keys that are not text: reported from the YAML tree (yamlpos.non_text_keys)
        issue = issue_from_pydantic(error, root)
        if issue.path in seen or issue.path in skip_paths:
            continue
        seen.add(issue.path)
        issues.append(issue)
    return issues


def merge_typos(issues: list[CatalogIssue]) -> list[CatalogIssue]:
    """A misspelt key shows up twice (unknown 'memroy_mib' + missing 'memory_mib'); keep only
    the unknown-key issue, whose fix already names the right key."""
    suggested = set()
    for issue in issues:
        m = re.fullmatch(r"did you mean '(.+)'\?", issue.fix)
        if m and issue.message.startswith("unknown key"):
            parent = issue.path.rpartition(".")[0]
            suggested.add(f"{parent}.{m.group(1)}" if parent else m.group(1))
    return [i for i in issues if not (i.message.startswith("required key") and i.path in suggested)]
