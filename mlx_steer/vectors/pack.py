"""A vector pack: a folder ready to upload to the hub (``huggingface-cli upload ORG/NAME FOLDER``)
holding one safetensors vector file per name and a README.md model card
(:mod:`mlx_steer.vectors.vector_card`); :func:`~mlx_steer.vectors.vector_file.load_vector` reads it
back from the folder or, once uploaded, by repo id."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from .steering_vector import SteeringVector
from .vector_card import CARD, NAME, VectorCard, render_card
from .vector_file import replace_atomically, save_vector


def save_vector_pack(
    folder: str | os.PathLike,
    vectors: SteeringVector | Mapping[str, SteeringVector],
    *,
    card: VectorCard | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``vectors`` as ``<name>.safetensors`` files and a README.md card into ``folder``.

    Args:
        folder: The pack's folder; made if missing (its parent must exist). It must be empty
            unless ``overwrite``.
        vectors: The vectors by name (1-64 letters, digits, '_', '.', '-'); a single vector is
            named ``vector``.
        card: What the card says (base model, method, data, evaluation table...); its
            ``vectors`` field is filled from ``vectors``.
        overwrite: Write into a non-empty folder, replacing the pack's files (others stay).

    Returns:
        The folder.

    Raises:
        ValueError: a bad name, something that is not a SteeringVector, a card that is not a
            VectorCard, or a non-empty folder without ``overwrite``. Nothing is written then.
        FileNotFoundError: the folder's parent does not exist.
    """
    named = {"vector": vectors} if isinstance(vectors, SteeringVector) else vectors
    if not isinstance(named, Mapping) or not named:
        raise ValueError(f"vectors must be a SteeringVector or a non-empty mapping of name to SteeringVector, "
                         f"got {type(vectors).__name__}")
    for name, vec in named.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError(f"vector name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (starting with a "
                             "letter or digit)")
        if not isinstance(vec, SteeringVector):
            raise ValueError(f"vector {name!r} must be a SteeringVector, got {type(vec).__name__}")
    if len({n.lower() for n in named}) != len(named):
        raise ValueError(f"vector names {sorted(named)} differ only in case; files of such names collide on macOS")
    if card is not None and not isinstance(card, VectorCard):
        raise ValueError(f"card must be a VectorCard, got {type(card).__name__}")
    files = {n: f"{n}.safetensors" for n in named}
    card = dataclasses.replace(card or VectorCard(), vectors=files)
    text = render_card(card, named)
    out = Path(folder).expanduser()
    if not out.parent.is_dir():
        raise FileNotFoundError(f"cannot write a vector pack to {out}: folder {out.parent} does not exist")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; a vector pack is a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} is not empty; give an empty or new folder, or overwrite=True")
    made = not out.exists()
    out.mkdir(exist_ok=True)
    try:
        for name, vec in named.items():
            save_vector(vec, out / files[name])
        replace_atomically(out / CARD, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    except BaseException:
        if made:  # a folder this call made holds nothing else: remove it whole
            shutil.rmtree(out)
        raise
    return out
