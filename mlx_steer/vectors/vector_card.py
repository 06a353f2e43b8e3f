"""A vector pack's model card: the ``README.md`` a hub repo shows, with YAML front matter the hub
reads (``base_model``, ``tags``, ``license``) and an ``mlx_steer`` block this package reads back
(the pack's vectors by name, method, data, the evaluation table). The Markdown body is written from
the same fields for people; only the front matter is read."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .steering_vector import SteeringVector

CARD = "README.md"
PACK_FORMAT = "mlx_steer.vector_pack"
TAGS = ("mlx-steer", "steering-vector")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class VectorCard:
    """What a vector pack says about its vectors.

    Attributes:
        base_model: Hub id of the model the vectors were made for (the card's ``base_model``).
        title: The card's heading; default: the first vector's name.
        description: A paragraph under the heading.
        method: How the vectors were made (e.g. "mean difference of last-token residuals").
        data: What they were made from (the prompt pairs, a dataset id).
        evaluation: An evaluation table: an :class:`~mlx_steer.evaluate.table.EvalTable` (what
            ``evaluate()`` returns) or rows as mappings of column to value; kept as rows.
        tags: Hub tags besides ``mlx-steer`` and ``steering-vector``.
        license: A hub licence id (``apache-2.0``, ``mit``...).
        vectors: Name to file in the pack; :func:`~mlx_steer.vectors.pack.save_vector_pack` fills it.
    """

    base_model: str | None = None
    title: str | None = None
    description: str | None = None
    method: str | None = None
    data: str | None = None
    evaluation: Any = ()
    tags: tuple[str, ...] = ()
    license: str | None = None
    vectors: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("base_model", "title", "description", "method", "data", "license"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"VectorCard {key} must be a string or None, got {type(value).__name__} {value!r:.80}")
        if isinstance(self.tags, str) or not all(isinstance(t, str) and t for t in self.tags):
            raise ValueError(f"VectorCard tags must be a sequence of non-empty strings, got {self.tags!r:.120}")
        bad = {k: v for k, v in dict(self.vectors).items() if not (isinstance(k, str) and NAME.fullmatch(k)
                                                                   and isinstance(v, str) and v)}
        if bad:
            raise ValueError(f"VectorCard vectors maps names (1-64 letters, digits, '_', '.', '-') to file names; "
                             f"got {bad!r:.200}")
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "evaluation", evaluation_rows(self.evaluation))
        object.__setattr__(self, "vectors", MappingProxyType(dict(self.vectors)))


def evaluation_rows(table: Any) -> tuple[Mapping[str, Any], ...]:
    """An evaluation table as rows (column to value; NaN as None): from an EvalTable (anything with
    ``columns()`` and ``rows`` of objects with ``value(column)``) or from mappings."""
    if hasattr(table, "columns") and callable(table.columns) and hasattr(table, "rows"):
        cols = table.columns()
        rows = [{c: (getattr(r, c) if c in ("vector", "layer", "strength") else r.value(c)) for c in cols}
                for r in table.rows]
    elif isinstance(table, Sequence) and not isinstance(table, (str, bytes)) and all(
            isinstance(r, Mapping) for r in table):
        rows = [dict(r) for r in table]
    else:
        raise ValueError(f"evaluation must be an EvalTable (what evaluate() returns) or a sequence of row mappings, "
                         f"got {type(table).__name__}")
    for row in rows:
        for k, v in row.items():
            if not isinstance(k, str) or not (v is None or isinstance(v, (str, int, float, bool))):
                raise ValueError(f"evaluation cells must be str/int/float/bool/None under string columns, "
                                 f"got {k!r}: {v!r:.80}")
    return tuple(MappingProxyType({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                   for k, v in r.items()}) for r in rows)


def render_card(card: VectorCard, vectors: Mapping[str, SteeringVector]) -> str:
    """The README.md text: front matter, then sections for base model, vectors (sites), method, data
    and evaluation; ``vectors`` are the pack's vectors by name, in ``card.vectors``' files."""
    yaml = _yaml()

    block: dict[str, Any] = {"format": PACK_FORMAT, "vectors": dict(card.vectors)}
    block |= {k: getattr(card, k) for k in ("title", "description", "method", "data") if getattr(card, k) is not None}
    if card.evaluation:
        block["evaluation"] = [dict(r) for r in card.evaluation]
    front: dict[str, Any] = {"base_model": card.base_model} if card.base_model else {}
    front |= {"license": card.license} if card.license else {}
    front |= {"tags": list(dict.fromkeys((*TAGS, *card.tags))), "mlx_steer": block}
    title = card.title or next(iter(card.vectors), "vectors")
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "", f"# {title}", ""]
    if card.description:
        lines += [card.description, ""]
    lines += ["## Base model", "", card.base_model or "Not stated.", "", "## Vectors and sites", "",
              "| name | file | sites | hook point | hidden size | method |", "|---|---|---|---|---|---|"]
    for name, vec in vectors.items():
        lines.append(f"| {name} | {card.vectors[name]} | {', '.join(vec.sites)} | {vec.hook_point} | "
                     f"{vec.hidden_size} | {vec.method or ''} |")
    lines += ["", "## Method", "", card.method or "Not stated.", "", "## Data", "", card.data or "Not stated.", ""]
    if card.evaluation:
        cols = list(dict.fromkeys(c for r in card.evaluation for c in r))
        lines += ["## Evaluation", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in card.evaluation]
        lines.append("")
    first = next(iter(card.vectors), "NAME")
    lines += ["## Use", "", "With mlx_steer (`pip install mlx-steer-lab`):",
              "", "```python", "from mlx_steer import load_vector", "",
              f'vec = load_vector("ORG/NAME", name="{first}")  # this repo\'s id', "```", ""]
    return "\n".join(lines)


def _yaml() -> Any:
    """PyYAML (huggingface_hub's dependency), untyped: imported by name so no stubs are needed."""
    import importlib

    return importlib.import_module("yaml")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")


def read_card(path: Path) -> VectorCard:
    """The VectorCard in a pack's README.md (its front matter).

    Raises:
        ValueError: no front matter, YAML that does not parse, or not a vector pack's card (names
            what was found).
    """
    yaml = _yaml()

    text = path.read_text(encoding="utf-8")
    m = re.match(r"---\r?\n(.*?)\r?\n---\r?\n", text, re.S)
    if m is None:
        raise ValueError(f"{path} has no YAML front matter (a '---' block first); not a vector pack's card")
    try:
        front = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: its front matter is not YAML ({exc})") from None
    block = front.get("mlx_steer") if isinstance(front, dict) else None
    if not isinstance(block, dict) or block.get("format") != PACK_FORMAT:
        keys = ", ".join(map(str, front)) if isinstance(front, dict) else type(front).__name__
        raise ValueError(f"{path} is not a vector pack's card: its front matter has no mlx_steer block with "
                         f"format {PACK_FORMAT!r} (keys: {keys or 'none'})")
    tags = tuple(t for t in front.get("tags") or () if t not in TAGS)
    try:
        return VectorCard(base_model=front.get("base_model"), license=front.get("license"), tags=tags,
                          vectors=block.get("vectors") or {}, evaluation=block.get("evaluation") or (),
                          **{k: block.get(k) for k in ("title", "description", "method", "data")})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed vector pack card: {exc}") from None
