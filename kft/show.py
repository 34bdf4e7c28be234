"""What a recipe holds, for people: ``python -m kft.run RECIPE --show`` and ``kft recipes``.

The documentation of a recipe key is read from the source of :mod:`kft.config` itself, so it
cannot drift from the code: a field's doc is the ``# comment`` at the end of its line (of any
of its lines when the field spans several), or, when it has none, the block of comment lines
directly above it; a section's doc is the first paragraph of its dataclass docstring. Fields
without either show no doc. The source is parsed with :mod:`ast` (classes, fields and their
line numbers) and :mod:`tokenize` (real comments only, never a ``#`` inside a string).

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import io
import json
import tokenize
from pathlib import Path

from kft import config as cfg

# Comments that are tool directives, not documentation.
_PRAGMAS = ("noqa", "type:", "fmt:", "pragma", "isort:")
MARK = "*"  # a value that differs from the kft.config default
_ALIGN = 56  # the doc column, unless "key = value" is longer


@dataclasses.dataclass(frozen=True)
class ClassDocs:
    """The docs of one dataclass in the parsed source: ``doc`` (first docstring paragraph,
    ``""`` when none) and ``fields`` (``{field name: doc}``, only fields that have one)."""

    doc: str
    fields: dict


def parse_docs(source: str) -> dict[str, ClassDocs]:
    """``{class name: ClassDocs}`` of every class at the top level of ``source`` (Python)."""
    comments = {}  # line -> comment text, for comments that follow code on their line
    alone = {}  # line -> comment text, for lines that hold only a comment
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        line, col = token.start
        text = token.string.lstrip("#").strip()
        if text.startswith(_PRAGMAS):
            text = ""
        before = token.line[:col] if token.line else ""
        (alone if not before.strip() else comments)[line] = text
    docs = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = {}
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            inline = [comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1)
                      if comments.get(n)]
            if not inline:  # the comment block right above the field
                n = stmt.lineno - 1
                while n in alone:
                    inline.insert(0, alone[n])
                    n -= 1
            text = " ".join(t for t in inline if t)
            if text:
                fields[stmt.target.id] = text
        docs[node.name] = ClassDocs(_first_paragraph(ast.get_docstring(node) or ""), fields)
    return docs


def _first_paragraph(docstring: str) -> str:
    return " ".join(docstring.strip().split("\n\n")[0].split())


@functools.lru_cache(maxsize=1)
def config_docs() -> dict[str, ClassDocs]:
    """:func:`parse_docs` of kft/config.py as installed."""
    return parse_docs(Path(cfg.__file__).read_text(encoding="utf-8"))


def key_docs(recipe: cfg.Recipe | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """``({dotted key: doc}, {section: doc})`` for every key of :func:`kft.config.valid_keys`
    (``""`` where there is no doc); sections are ``"data"``, ``"model"``, ``"model.ssd"`` ...
    """
    docs = config_docs()
    keys, sections = {}, {}

    def walk(obj, prefix):
        own = docs.get(type(obj).__name__, ClassDocs("", {}))
        if prefix:
            sections[prefix.rstrip(".")] = own.doc
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                keys[f"{prefix}{f.name}"] = own.fields.get(f.name, "")

    walk(recipe if recipe is not None else cfg.Recipe(), "")
    return keys, sections


def _plain(value):
    """Tuples as lists, recursively (what JSON and ``--set`` lists look like)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def show_value(value) -> str:
    """A recipe value as JSON: strings quoted (``""`` is empty), tuples as lists."""
    return json.dumps(_plain(value), ensure_ascii=False)


def recipe_lines(recipe: cfg.Recipe, source: str = "") -> list[str]:
    """Every key of ``recipe`` as ``[*] key = value  # doc``, grouped under one ``[section]``
    line (with the section's doc) per dataclass; ``*`` marks a value that differs from the
    :mod:`kft.config` default. ``source`` (the recipe file) is named in the first line."""
    keys, sections = key_docs(recipe)
    defaults = dict(cfg.flat_items(cfg.Recipe()))
    what = f"{source}: " if source else ""
    lines = [f"# {what}every key, its value and what it means ({MARK} = differs from the "
             "kft.config default); change one with --set KEY=VALUE"]
    section = ""
    for key, value in cfg.flat_items(recipe):
        here = key.rpartition(".")[0]
        if here != section:
            section = here
            doc = sections.get(section, "")
            lines.append("")
            lines.append(f"[{section}]" + (f" {doc}" if doc else ""))
        mark = MARK if _plain(value) != _plain(defaults.get(key)) else " "
        text = f"{mark} {key} = {show_value(value)}"
        doc = keys.get(key, "")
        lines.append(f"{text:<{_ALIGN}}  # {doc}" if doc else text)
    return lines


# ---------------------------------------------------------------------------------------------
# kft recipes


def default_recipes_dir(cwd: str | Path | None = None) -> Path:
    """``recipes/`` of the current directory when it exists, else that of the kft checkout."""
    here = Path(cwd) if cwd is not None else Path()  # relative: paths a user can paste
    if (here / "recipes").is_dir():
        return here / "recipes"
    return Path(cfg.__file__).resolve().parents[1] / "recipes"


def list_recipes(folder: str | Path) -> list[dict]:
    """``[{"path", "name", "task", "description"} or {"path", "error"}]`` for every recipe file
    (``*.py`` not starting with ``_``) in ``folder``, sorted by file name; each is loaded with
    :func:`kft.config.load_recipe`, a file that fails gets its one-line error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise cfg.ConfigError(f"{folder}: no such recipe folder (give a folder of recipe "
                              "*.py files, e.g. the recipes/ of a kft checkout)")
    rows = []
    for path in sorted(p for p in folder.glob("*.py") if not p.name.startswith("_")):
        try:
            recipe = cfg.load_recipe(path)
        except cfg.ConfigError as e:
            rows.append({"path": str(path), "error": " ".join(str(e).split())})
            continue
        rows.append({"path": str(path), "name": recipe.name, "task": recipe.task,
                     "description": " ".join(recipe.description.split())})
    return rows


def recipe_table(rows: list[dict]) -> list[str]:
    """One line per :func:`list_recipes` row: path, name, task and description in columns."""
    width = max([len(r["path"]) for r in rows] + [4])
    name_w = max([len(r.get("name", "")) for r in rows] + [4])
    task_w = max([len(r.get("task", "")) for r in rows] + [4])
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{r['path']:<{width}}  error: {r['error']}")
        else:
            lines.append(f"{r['path']:<{width}}  {r['name']:<{name_w}}  {r['task']:<{task_w}}"
                         f"  {r['description'] or '(no description)'}")
    return lines
