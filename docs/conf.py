"""Sphinx configuration of gradx's documentation site.

Build (what ``.ci/run`` runs, offline, warnings as errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The notebooks of ``notebooks/`` are copied into ``docs/gallery/`` (git-ignored) when the
build starts and rendered from their saved outputs; none is executed. Cross-references to
python, numpy, jax and optax resolve through the inventories committed in
``docs/_inventories/`` (written by ``docs/_inventories/make.py``): the build needs no network.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import gradx  # noqa: E402

project = "gradx"
author = "gradx contributors"
copyright = "gradx contributors"
release = version = gradx.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_inventories", "Thumbs.db", ".DS_Store", "**/.ipynb_checkpoints"]

# Every reference must resolve: a missing API entry is a build error, not a silent plain word.
nitpicky = True

# Google-style docstrings (Args:, Returns:, Raises:); the signatures carry no annotations
# (the prose says the types), so no typing internals need a target.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = False  # like autodoc_typehints: the prose says the types
autodoc_typehints = "none"
autodoc_member_order = "bysource"
toc_object_entries_show_parents = "hide"  # "adam()" in the page contents, not "gradx.adam()"
autodoc_default_options = {"exclude-members": "__init__, __new__"}

_INVENTORIES = DOCS / "_inventories"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(_INVENTORIES / "python.inv")),
    "numpy": ("https://numpy.org/doc/stable", str(_INVENTORIES / "numpy.inv")),
    "jax": ("https://docs.jax.dev/en/latest", str(_INVENTORIES / "jax.inv")),
    "optax": ("https://optax.readthedocs.io/en/latest", str(_INVENTORIES / "optax.inv")),
}

myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the notebooks are rendered from their saved outputs
nb_merge_streams = True

html_theme = "sphinx_book_theme"
html_title = "gradx"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_static_path: list[str] = []


def _copy_notebooks() -> None:
    """Copy ``notebooks/*.ipynb`` into ``docs/gallery/`` (myst-nb reads only the source dir)."""
    gallery = DOCS / "gallery"
    for stale in gallery.glob("*.ipynb"):
        if not (ROOT / "notebooks" / stale.name).exists():
            stale.unlink()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        target = gallery / notebook.name
        if not target.exists() or target.read_bytes() != notebook.read_bytes():
            shutil.copyfile(notebook, target)


_copy_notebooks()
