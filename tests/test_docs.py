"""The documentation stays true: every ```python block runs, and the site builds.

Each ```python fenced block of ``docs/*.md`` and ``README.md`` runs on its own
in a separate Python process, in a fresh temporary working folder, with only
the installed sources (a block that defines a plugin hands it to
``Engine(plugins={...})``). Blocks fenced as anything else (```text,
```console, ```toml, ```pycon) are shown, not run.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pluggy
import pytest
from child_env import isolated_env

import headwater
from headwater import hookspecs

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")


@attrs.frozen
class Block:
    """One fenced code block: where it starts (1-based line of the opening fence) and its code."""

    path: Path
    line: int
    code: str

    @property
    def label(self) -> str:
        return f"{self.path.relative_to(REPO).as_posix()}:{self.line}"


def python_blocks(path: Path, text: str) -> list[Block]:
    """The ```python blocks of Markdown ``text``, dedented (blocks may sit in lists or admonitions)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening["fence"]
        language = (opening["info"].split() or [""])[0].lstrip("{.").rstrip("}")
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if closing is not None and closing["fence"].startswith(fence) and not closing["info"].strip():
                break
            body.append(lines[j])
            j += 1
        if language == "python":
            blocks.append(Block(path, i + 1, textwrap.dedent("\n".join(body)) + "\n"))
        i = j + 1
    return blocks


def documented_blocks() -> list[Block]:
    pages = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
    return [b for page in pages if page.is_file() for b in python_blocks(page, page.read_text())]


BLOCKS = documented_blocks()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("block", BLOCKS, ids=[b.label for b in BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    script = tmp_path / "snippet.py"
    script.write_text(block.code)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=work,
        env=isolated_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (
        f"the ```python block at {block.label} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    )


def test_the_docs_have_runnable_examples() -> None:
    pages = {b.path.name for b in BLOCKS}
    for page in ("index.md", "quickstart.md", "writing-a-plugin.md", "records-and-states.md"):
        assert page in pages, f"docs/{page} has no ```python block"
    assert "README.md" in pages


def test_block_extraction(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        Intro
        ```python
        print(1)
        ```
        ```console
        $ headwater sources
        ```
        1. A step:

            ```python title="in a list"
            if True:
                print(2)
            ```

        ````markdown
        ```python
        print("shown inside a markdown example, not run")
        ```
        ````
        ```pycon
        >>> 1
        ```
        """
    )
    found = python_blocks(tmp_path / "page.md", text)
    assert [(b.line, b.code) for b in found] == [
        (2, "print(1)\n"),
        (10, "if True:\n    print(2)\n"),
    ]


@pytest.mark.timeout(300)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python") if not _importable(m)]
    if missing:
        pytest.skip(f"the docs extra is not installed (no {', '.join(missing)}): pip install -e '.[docs]'")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    hooks = (site / "hooks" / "index.html").read_text()
    for hook in hook_names():
        assert f'id="headwater.hookspecs.{hook}"' in hooks, f"the hook reference lacks {hook}"
    assert ":class:" not in hooks, "a Sphinx role was left unconverted in the hook reference"


def hook_names() -> list[str]:
    """Every hook headwater defines, as pluggy reads them from ``headwater.hookspecs``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    names = sorted(name for name in vars(pm.hook) if not name.startswith("_"))
    assert "download_impl" in names and "translate_target" in names
    return names


def test_the_hook_table_lists_every_hook() -> None:
    table = (REPO / "docs" / "hooks.md").read_text().split("\n\n## ")[0]
    for hook in hook_names():
        assert f"| `{hook}(" in table, f"the table at the top of docs/hooks.md lacks {hook}"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


# -- the code names the maintainers' pages cite ----------------------------------------

#: A name in backticks, perhaps called: ``Shard.move``, ``Download.start(ctx)``, ``_outcomes.settle``.
CITED = re.compile(r"`(?P<name>@?[A-Za-z_][\w]*(?:\.\w+)*)(?:\([^`]*\))?`")
#: What the pages cite from outside headwater, and two names that are not code (a file, an entry point group).
OUTSIDE = {
    "Future": concurrent.futures.Future,
    "PluginManager": pluggy.PluginManager,
    "_multicall": pluggy.PluginManager,  # pluggy's own internals, named in passing
    "None": None,
}
NOT_CODE = {"headwater.toml", "headwater.sources"}


def headwater_names() -> dict[str, object]:
    """headwater's modules (by their own name: ``_shard``, ``testing``) and the classes they define."""
    found: dict[str, object] = {"headwater": headwater, "_headwater_entry": None}
    for info in pkgutil.iter_modules(headwater.__path__):
        module = importlib.import_module(f"headwater.{info.name}")
        found[info.name] = module
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__:
                found.setdefault(value.__name__, value)
    return found


def has(owner: object, attribute: str) -> bool:
    """Whether ``owner`` has ``attribute``: as Python sees it, or set on ``self`` in a class's code."""
    if hasattr(owner, attribute):
        return True
    if not isinstance(owner, type):
        return False
    return any(
        re.search(rf"\bself\.{attribute}\b\s*(?::[^=\n]+)?=", inspect.getsource(cls))
        for cls in owner.__mro__
        if cls.__module__.startswith("headwater")
    )


def unresolved(text: str, names: dict[str, object]) -> list[str]:
    """The names cited in ``text`` that look like headwater's (a class, a module, ``headwater.``) and are not.

    A name is checked when its first part is a module or class of
    headwater, starts with ``headwater.`` or an underscore, or is
    capitalised like a class; anything else (``ctx.cancelled``,
    ``time.monotonic``, a rule's name) is prose.
    """
    missing = []
    for match in CITED.finditer(text):
        cited = match["name"]
        first, *rest = cited.split(".")
        if cited in NOT_CODE or first in OUTSIDE or cited.startswith("@"):
            continue
        looks_like_ours = first in names or first.startswith("_") or re.match(r"[A-Z][a-z]", first)
        if not looks_like_ours:
            continue
        owner = names.get(first, missing)
        for part in rest:
            if owner is missing or not has(owner, part):
                owner = missing
                break
            owner = getattr(owner, part, None)
        if owner is missing:
            missing.append(cited)
    return missing


@pytest.mark.parametrize("page", ["architecture.md", "regression-suite.md"])
def test_the_code_names_a_page_cites_exist(page: str) -> None:
    names = headwater_names()
    assert unresolved((REPO / "docs" / page).read_text(), names) == []


def test_a_name_that_is_gone_is_reported() -> None:
    names = headwater_names()
    cited = "`Shard.move` `Engine.freeze(source)` `_outcomes.settle` `Shards.home` `ctx.cancelled` `Future`"
    assert unresolved(cited, names) == []
    assert unresolved("`Engine._run` `_Shard.move` `_outcomes.settled` `Download.gone(ctx)`", names) == [
        "Engine._run",
        "_Shard.move",
        "_outcomes.settled",
        "Download.gone",
    ]
