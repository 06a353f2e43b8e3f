"""mkdocs hooks: the tutorials are pages of the site, read from their one copy in ``examples/``.

mkdocs reads only ``docs/``; every ``examples/<name>.py`` that the nav names is added as a file of the
site from the repository's ``examples/`` folder, and mkdocs-jupyter renders it (a jupytext percent
script) as a notebook page, ``examples/<name>/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent


def _nav_paths(nav: Any) -> Iterator[str]:
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_paths(item)
    elif isinstance(nav, dict):
        for item in nav.values():
            yield from _nav_paths(item)


@event_priority(100)  # before mkdocs-jupyter's on_files, which makes them notebook pages
def on_files(files: Files, config: MkDocsConfig) -> Files:
    for uri in _nav_paths(config.nav):
        if uri.startswith("examples/") and uri.endswith(".py"):
            if not (ROOT / uri).is_file():
                raise FileNotFoundError(f"mkdocs.yml's nav names {uri}, which is not in {ROOT}")
            files.append(File(uri, src_dir=str(ROOT), dest_dir=config.site_dir,
                              use_directory_urls=config.use_directory_urls))
    return files
