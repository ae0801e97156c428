"""``headwater plugin new``: render the copier plugin template into a new project.

The template (``plugin_template/`` in the repository) ships inside the wheel as
``headwater/plugin_template``; in an editable checkout it is found at the
repository root instead. Rendering needs copier, which comes with the
``template`` extra (``pip install 'headwater[template]'``).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click

from headwater import __version__
from headwater._contract import is_valid_name
from headwater._errors import TemplateError

TEMPLATE_DIR = "plugin_template"
EXIT_INTERRUPTED = 130
EXTRA = "template"


def find_template() -> Path:
    """The folder holding the template's ``copier.yml``: in the package, else in the checkout.

    Raises TemplateError when neither place has it (a broken install).
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / TEMPLATE_DIR, package.parent.parent / TEMPLATE_DIR):
        if (candidate / "copier.yml").is_file():
            return candidate
    raise TemplateError(
        f"the plugin template is missing: no {TEMPLATE_DIR}/copier.yml in {package} "
        f"nor in {package.parent.parent}; reinstall headwater"
    )


def _git_config(key: str) -> str | None:
    """``git config --get key``, or None when git or the setting is missing."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run([git, "config", "--get", key], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    value = done.stdout.strip()
    return value if done.returncode == 0 and value else None


def render_plugin(name: str, dest: Path, *, interactive: bool) -> Path:
    """Render the template for source ``name`` into the new folder ``dest``; return ``dest``.

    With ``interactive`` copier asks its questions on the terminal (defaults
    offered, the author taken from ``git config`` when set); without it every
    answer is its default and nothing is asked. Raises TemplateError for an
    invalid source name, a ``dest`` that exists and is not empty, missing
    copier, or a failure inside copier (a folder it created is removed again);
    KeyboardInterrupt when the user interrupts the questions.
    """
    if not is_valid_name(name):
        raise TemplateError(f"invalid source name {name!r}: use lowercase [a-z0-9][a-z0-9_-]*")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise TemplateError(f"{str(dest)!r} already exists and is not an empty folder; choose another --dest")
    try:
        import copier
    except ImportError as exc:
        raise TemplateError(
            f"headwater plugin new needs copier, which comes with the {EXTRA!r} extra: "
            f"pip install 'headwater[{EXTRA}]'"
        ) from exc
    user_defaults = {
        answer: value
        for answer, key in (("author_name", "user.name"), ("author_email", "user.email"))
        if (value := _git_config(key)) is not None
    }
    try:
        copier.run_copy(
            str(find_template()),
            dest,
            data={"name": name, "headwater_version": __version__},
            user_defaults=user_defaults,
            defaults=not interactive,
            quiet=True,  # the questions are still asked; copier's file list is noise here
        )
    except (copier.errors.CopierError, ValueError) as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt from exc
        raise TemplateError(f"copier could not render the template: {exc}") from exc
    return dest


@click.group()
def plugin() -> None:
    """Write your own source plugins."""


#: How a distribution's name starts; given with it, NAME names the distribution, not the source.
PREFIXES = ("headwater-", "headwater_")


def source_name(name: str) -> str:
    """The source name ``headwater plugin new NAME`` makes: NAME, less a leading ``headwater-``.

    ``headwater-foo`` (or ``headwater_foo``) names the distribution
    ``headwater-foo``, whose source is ``foo``. Pure.
    """
    for prefix in PREFIXES:
        rest = name.removeprefix(prefix)
        if rest != name and is_valid_name(rest):
            return rest
    return name


def _check_name(ctx: click.Context, param: click.Parameter, name: str) -> str:
    if not is_valid_name(name):
        raise click.BadParameter(f"invalid source name {name!r}: use lowercase [a-z0-9][a-z0-9_-]*")
    return name


@plugin.command()
@click.argument("name", callback=_check_name)
@click.option(
    "--dest",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder to create the project in.  [default: ./headwater-NAME]",
)
def new(name: str, dest: Path | None) -> None:
    """Create a pip-installable project for a new source called NAME.

    NAME may be the distribution's name instead: ``headwater-foo`` makes the
    source ``foo`` of the distribution ``headwater-foo``. On a terminal it
    asks for a description, the author and the license; otherwise it takes
    the defaults without asking.
    """
    given, name = name, source_name(name)
    if name != given:
        click.echo(f"{given} is the distribution; its source is called {name}")
    target = dest if dest is not None else Path(f"headwater-{name.replace('_', '-')}")
    try:
        render_plugin(name, target, interactive=sys.stdin.isatty())
    except TemplateError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        click.echo("interrupted; nothing was created", err=True)
        sys.exit(EXIT_INTERRUPTED)
    shown = str(target) if target.is_absolute() else f"./{target}"
    click.echo(f"Created {shown}. Next:")
    click.echo(
        f"  python -m pip install -e {shlex.quote(shown + '[dev]')} && python -m pytest {shlex.quote(shown)}"
    )
