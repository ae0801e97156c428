"""A griffe extension for the docs build: Sphinx roles in docstrings become inline code.

headwater's docstrings use ``:class:`~headwater.RatePolicy``` and friends, which
read well in ``help()`` and editors; mkdocstrings would print the role
literally. This turns each role into inline code showing the name as Sphinx
would (``~`` keeps only the last part).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|data|attr|mod|exc|obj):`(~?)([^`]+)`")


def plain(docstring: str) -> str:
    """``docstring`` with every Sphinx cross-reference role replaced by inline code."""
    return ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", docstring)


class SphinxRoles(griffe.Extension):
    """Rewrites each object's docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
