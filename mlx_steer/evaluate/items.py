"""A/B behaviour items (CAA's format): loading, the shipped CAA datasets, and a seeded split."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..engine.limits import check_seed

__all__ = ["ABItem", "CAA_BEHAVIOURS", "as_items", "caa_items", "load_items", "split_items"]

# the CAA behaviour datasets shipped in mlx_steer/evaluate/datasets/caa (see its README and LICENSE)
CAA_BEHAVIOURS = ("coordinate-other-ais", "corrigible-neutral-HHH", "myopic-reward", "refusal", "survival-instinct")
_LETTER = re.compile(r"^\s*\(?\s*([A-Za-z])\s*\)?\s*$")
# CAA's own files name the answers answer_matching_behavior / answer_not_matching_behavior
_KEYS = (("answer_matching", "answer_not_matching"), ("answer_matching_behavior", "answer_not_matching_behavior"))


@dataclass(frozen=True)
class ABItem:
    """One multiple-choice question and the letters of its two answers.

    Attributes:
        question: The question with its choices, e.g. ``"...\\n\\nChoices:\\n (A) Yes\\n (B) No"``.
        matching: The letter of the answer that shows the behaviour (``"A"``).
        not_matching: The letter of the answer that does not (``"B"``).
    """

    question: str
    matching: str
    not_matching: str

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"an A/B item needs a non-empty question, got {self.question!r}")
        for name in ("matching", "not_matching"):
            value = getattr(self, name)
            if not (isinstance(value, str) and len(value) == 1 and value.isalpha()):
                raise ValueError(f"an A/B item's {name} answer must be one letter, got {value!r}")
        if self.matching == self.not_matching:
            raise ValueError(f"an A/B item's two answers must differ, both are {self.matching!r}")


def _letter(value: object, what: str) -> str:
    found = _LETTER.match(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError(f"{what} must be an answer letter like '(A)' or 'A', got {value!r}")
    return found.group(1)


def as_items(items: Iterable[ABItem | Mapping]) -> list[ABItem]:
    """A/B items from :class:`ABItem` objects or dicts ``{question, answer_matching, answer_not_matching}``
    (CAA's ``answer_matching_behavior`` / ``answer_not_matching_behavior`` names work too).

    Raises:
        ValueError: no items, or an item without a question or its two answer letters (naming it).
    """
    out = []
    for i, item in enumerate(items):
        if isinstance(item, ABItem):
            out.append(item)
            continue
        if not isinstance(item, Mapping):
            raise ValueError(f"A/B item {i} must be a dict or ABItem, got {type(item).__name__}")
        keys = next((k for k in _KEYS if k[0] in item and k[1] in item), None)
        if keys is None or "question" not in item:
            raise ValueError(f"A/B item {i} needs 'question', 'answer_matching' and 'answer_not_matching' "
                             f"(or CAA's *_behavior names); it has {sorted(item)}")
        out.append(ABItem(item["question"], _letter(item[keys[0]], f"item {i}'s {keys[0]}"),
                          _letter(item[keys[1]], f"item {i}'s {keys[1]}")))
    if not out:
        raise ValueError("no A/B items given")
    return out


def load_items(path: str | Path) -> list[ABItem]:
    """A/B items from a JSON list or a JSONL file (one item per line).

    Raises:
        OSError: the file cannot be read.
        ValueError: not UTF-8, not JSON, JSON nested too deeply, or items without their fields (naming
            the file and the line).
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); give a JSON list or "
                         "one item per line") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply; give a JSON list of items or one item per line") from None
    if isinstance(data, list):
        return _file_items(path, data)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {n} is not JSON ({exc.msg}); give a JSON list or one item per line") from exc
        except RecursionError:
            raise ValueError(f"{path}: line {n}: JSON nested too deeply; expected one item per line") from None
    return _file_items(path, rows)


def _file_items(path: str | Path, rows: list) -> list[ABItem]:
    """:func:`as_items` of a file's rows, its errors naming the file."""
    try:
        return as_items(rows)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def caa_items(behaviour: str) -> list[ABItem]:
    """The shipped CAA items of one behaviour, in the dataset's order.

    Raises:
        ValueError: an unknown behaviour (naming the valid ones).
    """
    if behaviour not in CAA_BEHAVIOURS:
        raise ValueError(f"unknown CAA behaviour {behaviour!r}; shipped: {', '.join(CAA_BEHAVIOURS)}")
    data = resources.files("mlx_steer.evaluate") / "datasets" / "caa" / f"{behaviour}.jsonl"
    return as_items(json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip())


def split_items(items: Sequence[ABItem], *, held_out: int, train: int | None = None,
                seed: int = 0) -> tuple[list[ABItem], list[ABItem]]:
    """A fixed, seeded (train, held-out) split: ``held_out`` items for evaluation, and ``train``
    others (default: all the rest) for extraction; the two never share an item.

    Raises:
        ValueError: more items asked for than there are, a seed out of 0..2**64-1.
    """
    seed = check_seed(seed)
    n = len(items)
    train = n - held_out if train is None else train
    if held_out < 1 or train < 1 or held_out + train > n:
        raise ValueError(f"cannot split {n} items into {train} for extraction and {held_out} held out")
    order = np.random.default_rng(seed).permutation(n)
    return [items[i] for i in order[held_out: held_out + train]], [items[i] for i in order[:held_out]]
