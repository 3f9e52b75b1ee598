"""Sphinx configuration of the API reference (``make docs``: ``sphinx-build -W -n``, into site/).

The pages are docs/index.rst and docs/api/*.rst; the rest of docs/ is the README's figures and
result files, which Sphinx does not read. Every docstring example runs as a doctest in
tests/test_docs.py, not here.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's metafunc

project = "metafunc"
author = "the metafunc developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
root_doc = "index"
exclude_patterns = ["fewshot-synthetic"]
html_theme = "alabaster"
html_static_path: list[str] = []

# Google-style docstrings; attributes of records as fields, not directives (a NamedTuple's
# fields would otherwise be described twice)
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False  # nn.Module.forward's docstring is torch's, not ours

# Every cross-reference must resolve (-n), except to libraries whose inventories are not
# here (no network for intersphinx) and names that only annotate.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|collections|os|pathlib|typing|numbers|types)(\..*)?"),
    (r"py:.*", r"PyTree"),
]
