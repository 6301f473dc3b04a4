"""``--help`` text of a command's config sections, from the option dataclasses themselves (their
field defaults and the docstring under each field), so the help cannot drift from the schema."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

__all__ = ["config_help"]


def _field_docs(cls) -> dict[str, str]:
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return "null" if f.default is None else f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else "???"


def config_help(cls, prefix: str, width: int = 100) -> str:
    """One entry per field of dataclass ``cls``: ``prefix.name=default`` and its docstring."""
    docs, out = _field_docs(cls), []
    for f in dataclasses.fields(cls):
        out.append(f"  {prefix}.{f.name}={_default(f)}")
        if docs.get(f.name):
            out += textwrap.wrap(docs[f.name], width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(out)
