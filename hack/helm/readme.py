"""The values table of helm/respawn/README.md, generated from values.yaml (`make manifests`).

A key with a `# --` comment above it (helm-docs' convention; tests/deploy check that every leaf
has one, itself or through a parent) is a row: its dotted name, type and default from the YAML,
and the comment as its description. The table replaces what lies between the README's
`<!-- values:begin -->` and `<!-- values:end -->` markers; the prose around them is written by
hand. `hack/helm/manifests.py --check` fails when the committed table differs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent.parent.parent / "helm" / "respawn"
README = CHART / "README.md"
BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"
KEY = re.compile(r"^( *)([A-Za-z_][\w.-]*):(.*)$")


@dataclass(frozen=True)
class Row:
    key: str
    description: str


def documented_keys(values_text: str) -> list[Row]:
    """Dotted keys with a `# --` comment, in file order, with the comment's text."""
    rows: list[Row] = []
    stack: list[tuple[int, str]] = []
    comment: list[str] | None = None
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and comment is not None:
            comment.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if not stripped or stripped.startswith(("#", "- ")) or not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if comment is not None:
            rows.append(Row(".".join(k for _, k in stack), " ".join(comment)))
        comment = None
    return rows


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def _type(value: Any) -> str:
    names = {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    lines = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for row in documented_keys(values_text):
        value = _lookup(values, row.key)
        default = json.dumps(value, separators=(", ", ": "))
        lines.append(f"| `{row.key}` | {_type(value)} | `{_cell(default)}` | {_cell(row.description)} |")
    return "\n".join(lines) + "\n"


def render(readme_text: str, values_text: str) -> str:
    """The README with its values table regenerated."""
    head, found, rest = readme_text.partition(BEGIN)
    _old, found_end, tail = rest.partition(END)
    if not found or not found_end:
        raise ValueError(f"{README} lacks the {BEGIN} / {END} markers")
    return f"{head}{BEGIN}\n{table(values_text)}{END}{tail}"


def expected() -> str:
    return render(README.read_text(), (CHART / "values.yaml").read_text())
