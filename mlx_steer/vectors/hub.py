"""Where a vector comes from: a local file, a vector-pack folder, or a Hugging Face hub repo id
(``org/name``) read through huggingface_hub's cache.

A local path that exists always wins. A repo id is looked up in the hub cache first; only when it is
not there, and the hub is not switched off (``HF_HUB_OFFLINE=1``), is it downloaded (its vector files
and card only). Offline and not cached fails at once, naming the id. A folder, local or a repo's
snapshot, gives one vector file: ``filename=`` names it, ``name=`` picks a pack's vector by the name
in its card (or the file stem), and without either the folder must hold exactly one."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .vector_card import CARD, VectorCard, read_card

SUFFIXES = (".safetensors", ".gguf")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_VALID = ("valid: an existing .safetensors or .gguf file, a vector-pack folder, or a hub repo id "
          "'org/name' (e.g. 'acme/happy-vectors')")


def is_repo_id(text: str) -> bool:
    """``org/name`` in the hub's spelling, and not a missing local vector file (``dir/v.safetensors``)."""
    return (bool(_REPO_ID.fullmatch(text)) and ".." not in text and "--" not in text
            and not text.endswith((".git", *SUFFIXES)))


def offline() -> bool:
    """True when huggingface_hub must not touch the network (``HF_HUB_OFFLINE``, read now)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE")
    if flag is not None:
        return flag.strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE)


def vector_source(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    filename: str | None = None,
    name: str | None = None,
) -> Path:
    """The vector file ``source`` names (see the module's docstring).

    Raises:
        FileNotFoundError: neither an existing path nor a repo id; a repo id offline and not
            cached, or not found on the hub (names the id and revision).
        ValueError: ``revision`` with a local path; both ``filename`` and ``name``; a folder with
            no vector file, or several and no choice (lists them), or a ``filename``/``name`` it
            does not hold (lists the valid ones).
    """
    if filename is not None and name is not None:
        raise ValueError(f"give filename= or name=, not both (got filename={filename!r}, name={name!r})")
    path = Path(source).expanduser()
    if path.exists():
        if revision is not None:
            raise ValueError(f"revision={revision!r} is for hub repo ids; {path} is a local path")
        if path.is_file():
            if filename is not None or name is not None:
                raise ValueError(f"{path} is a file; filename= and name= choose a file in a folder or a hub repo")
            return path
        return pick_file(path, filename=filename, name=name, where=str(path))
    text = os.fspath(source)
    if not is_repo_id(text):
        raise FileNotFoundError(f"no vector file at {text}, and {text!r} is not a hub repo id; {_VALID}")
    folder = snapshot(text, revision=revision, filename=filename)
    at = f"@{revision}" if revision else ""
    return pick_file(folder, filename=filename, name=name, where=f"hub repo {text}{at}")


def hub_spec(text: str) -> tuple[str, str | None, str | None] | None:
    """A command line's vector that is not a plain file: ``(source, revision, name)`` for a pack
    folder ``FOLDER[:VECTOR]`` or a hub id ``ORG/NAME[@REVISION][:VECTOR]``; None for anything
    else (an existing file, or a path to report missing as such)."""
    if Path(text).expanduser().is_file():
        return None
    m = re.fullmatch(r"(?P<src>[^@:]+)(?:@(?P<rev>[^@:]+))?(?::(?P<name>[^@:]+))?", text)
    if m is None:
        return None
    src, rev, name = m["src"], m["rev"], m["name"]
    if Path(src).expanduser().is_dir():
        return (src, None, name) if rev is None else None
    return (src, rev, name) if is_repo_id(src) and not Path(src).expanduser().exists() else None


def load_vector_card(source: str | os.PathLike, *, revision: str | None = None) -> VectorCard:
    """The :class:`~mlx_steer.vectors.vector_card.VectorCard` of a vector pack: a local folder or a
    hub repo id (from the cache, or downloaded as :func:`vector_source` would).

    Raises:
        FileNotFoundError: as :func:`vector_source`; or the folder has no README.md.
        ValueError: the README.md is not a vector pack's card.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists():
        raise ValueError(f"{path} is a file; a vector pack is a folder (with {CARD}) or a hub repo id")
    elif is_repo_id(os.fspath(source)):
        folder = snapshot(os.fspath(source), revision=revision, filename=None)
    else:
        raise FileNotFoundError(f"no vector pack at {source}, and {os.fspath(source)!r} is not a hub repo id; "
                                "valid: a vector-pack folder or a hub repo id 'org/name'")
    if not (folder / CARD).is_file():
        raise FileNotFoundError(f"{source} has no {CARD}; a vector pack written by save_vector_pack has one")
    return read_card(folder / CARD)


def snapshot(repo_id: str, *, revision: str | None, filename: str | None) -> Path:
    """The repo's snapshot folder in the hub cache, downloading its vector files (or ``filename``)
    and card first when they are not cached and the hub may be reached."""
    from huggingface_hub import snapshot_download

    at = f" at revision {revision!r}" if revision else ""
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except FileNotFoundError:  # LocalEntryNotFoundError: nothing cached for this repo and revision
        folder = None
    if folder is not None and (filename is None or (folder / filename).is_file()):
        return folder
    if offline():
        what = f"file {filename!r} of " if folder is not None else ""
        raise FileNotFoundError(f"{what}vector repo {repo_id!r}{at} is not in the hub cache and HF_HUB_OFFLINE is set; "
                                "download it once online (or unset HF_HUB_OFFLINE), or give a local file")
    patterns = [filename, CARD] if filename else [f"*{s}" for s in SUFFIXES] + [CARD]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, etag_timeout=10))
    except Exception as exc:  # no network, unknown repo or revision, HTTP errors: all mean "not available"
        raise FileNotFoundError(f"vector repo {repo_id!r}{at} is not in the hub cache and could not be downloaded "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                "check the id, or give a local file") from None


def pick_file(folder: Path, *, filename: str | None, name: str | None, where: str) -> Path:
    """The one vector file of ``folder`` that ``filename`` or ``name`` choose (see the module docstring)."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.suffix in SUFFIXES and p.is_file() and not any(part.startswith(".") for part in
                                                                         p.relative_to(folder).parts))
    if not files:
        what = "holds" if where.startswith("hub repo") else "is not a file and holds"
        raise ValueError(f"{where} {what} no vector file (.safetensors or .gguf); {_VALID}")
    if filename is not None:
        if filename not in files:
            raise ValueError(f"{where} holds no vector file {filename!r}; valid: {', '.join(files)}")
        return folder / filename
    names = _names(folder, files)
    if name is not None:
        if name not in names:
            raise ValueError(f"{where} holds no vector named {name!r}; valid: {', '.join(sorted(names))}")
        return folder / names[name]
    if len(files) > 1:
        raise ValueError(f"{where} holds {len(files)} vector files ({', '.join(files)}); choose one with "
                         f"filename= or name= (names: {', '.join(sorted(names))})")
    return folder / files[0]


def _names(folder: Path, files: list[str]) -> dict[str, str]:
    """Name to file: the pack card's names, then each file's stem for files the card does not name."""
    card = read_card(folder / CARD).vectors if _is_pack(folder) else {}
    named = {n: f for n, f in card.items() if f in files}
    taken = set(named.values())
    for f in files:
        stem = Path(f).name.rsplit(".", 1)[0]
        if f not in taken and stem not in named:
            named[stem] = f
    return named


def _is_pack(folder: Path) -> bool:
    """A README.md whose front matter has the mlx_steer block (other repos' cards are not ours to parse)."""
    card = folder / CARD
    return card.is_file() and "\nmlx_steer:" in card.read_text(encoding="utf-8", errors="replace")[:20000]
