"""The commands' input files and output paths: prompt files, contrast-pair files (JSONL, a JSON
list, CSV/TSV), the contrast prompts of a command line, and output paths checked before any work.
Errors name the file as the user typed it (``ValueError``/``OSError``: exit 2)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

from .arguments import usage_error


def check_output(path: str, *, force: bool = False) -> Path:
    """``path`` checked before any work: a writable file name in an existing folder, and not an
    existing file unless ``force``. Errors name ``path`` as the user typed it.

    Raises:
        ValueError: a folder, or an existing file without ``force``.
        FileNotFoundError: the folder does not exist.
        PermissionError: the folder or file cannot be written.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{path} is a folder; give a file name for the output, e.g. {Path(path) / 'vector.safetensors'}")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"no such folder for the output: {p.parent}")
    if p.exists() and not force:
        raise ValueError(f"{path} exists; pass --force to overwrite it")
    try:  # a real write: permission bits, read-only mounts and ACLs all show here
        fd, probe = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".check")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(f"cannot write {path}: {exc.strerror or exc}") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise PermissionError(f"cannot write {path}: the file is read-only")
    return p


def printable(value: object) -> str:
    """``str(value)`` with control characters (terminal escapes, carriage returns, bidi
    overrides) shown as Python escapes, so file metadata cannot drive the terminal."""
    return "".join(c if unicodedata.category(c)[0] != "C" else c.encode("unicode_escape").decode("ascii")
                   for c in str(value))


def existing_file(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not p.is_file():
        raise ValueError(f"not a file: {path}")
    return p


def _lines(path: str) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line of a UTF-8 file."""
    p = existing_file(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_prompts(path: str) -> list[str]:
    """One prompt per non-blank line."""
    prompts = [line for _, line in _lines(path)]
    if not prompts:
        raise ValueError(f"{path} has no prompts (one per line expected)")
    return prompts


def read_pairs(path: str) -> tuple[list[str], list[str]]:
    """Contrast pairs from JSONL (``{"positive": ..., "negative": ...}`` per line), a JSON list of
    such objects, or CSV/TSV (columns ``positive,negative``), told apart by extension and first character."""
    lines = _lines(path)
    suffix = Path(path).suffix.lower()
    first = lines[0][1].lstrip()[:1] if lines else ""
    if first == "[" and suffix not in (".csv", ".tsv"):
        pairs = _json_array_pairs(path, "\n".join(line for _, line in lines))
    elif suffix in (".jsonl", ".json", ".ndjson") or (suffix not in (".csv", ".tsv") and first == "{"):
        pairs = _jsonl_pairs(path, lines)
    else:
        pairs = _csv_pairs(path, "\t" if suffix == ".tsv" else ",")
    if not pairs:
        raise ValueError(f"{path} has no contrast pairs")
    return [p for p, _ in pairs], [n for _, n in pairs]


_PAIR_SHAPE = '{"positive": ..., "negative": ...}'


def _jsonl_pairs(path: str, lines: list[tuple[int, str]]) -> list[tuple[str, str]]:
    pairs = []
    for n, line in lines:
        obj = _json(path, line, n, _PAIR_SHAPE)
        if not isinstance(obj, dict):
            raise ValueError(f"{path} line {n}: expected an object {_PAIR_SHAPE}, got {type(obj).__name__}")
        pairs.append(_pair(obj, f"{path} line {n}"))
    return pairs


def _json_array_pairs(path: str, text: str) -> list[tuple[str, str]]:
    """A JSON list of pair objects (what a ``.json`` file often holds instead of JSONL)."""
    pairs = []
    for i, obj in enumerate(_json(path, text, None, f"a list of {_PAIR_SHAPE}")):
        if not isinstance(obj, dict):
            raise ValueError(f"{path} item {i}: expected an object, got {type(obj).__name__}")
        pairs.append(_pair(obj, f"{path} item {i}"))
    return pairs


def _json(path: str, text: str, line: int | None, expected: str) -> Any:
    """``text`` parsed, its errors naming ``path`` and the line (``line``, or where in ``text``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} line {exc.lineno if line is None else line}: invalid JSON "
                         f"({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        where = "" if line is None else f" line {line}"
        raise ValueError(f"{path}{where}: JSON nested too deeply; expected {expected}") from None


def _csv_pairs(path: str, delimiter: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = reader.fieldnames or []
        missing = [c for c in ("positive", "negative") if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column {missing[0]!r}; the header must name positive and negative "
                             f"(found: {', '.join(map(repr, columns)) or 'no header'})")
        return [_pair(row, f"{path} line {reader.line_num}")
                for row in reader if any((v or "").strip() for v in row.values() if isinstance(v, str))]


def _pair(row: dict, where: str) -> tuple[str, str]:
    return _field(row, "positive", where), _field(row, "negative", where)


def _field(row: dict, key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise ValueError(f"{where}: missing key {key!r}")
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def contrast_prompts(args: argparse.Namespace, pairs_file: str | None) -> tuple[list[str], list[str]] | None:
    """Contrast prompts from a pairs file, --positive-file/--negative-file or --positive/--negative
    (exactly one source), or None when none is given."""
    pos_file, neg_file = getattr(args, "positive_file", None), getattr(args, "negative_file", None)
    files = [pos_file, neg_file]
    inline = [args.positive, args.negative]
    given = [name for name, used in (("a pairs file", pairs_file), ("--positive-file/--negative-file", any(files)),
                                     ("--positive/--negative", any(inline))) if used]
    if len(given) > 1:
        usage_error(args, f"give contrast prompts one way, not {' and '.join(given)}")
    if pairs_file:
        return read_pairs(pairs_file)
    if any(files):
        if not (pos_file and neg_file):
            usage_error(args, "--positive-file and --negative-file go together")
        return read_prompts(pos_file), read_prompts(neg_file)
    if any(inline):
        if not all(inline):
            usage_error(args, "--positive and --negative go together")
        return list(args.positive), list(args.negative)
    return None

