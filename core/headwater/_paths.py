"""Where headwater keeps its files: the home folder, the command line's journal and its config file.

Light to import (no platformdirs until a path needs the user folders):
``headwater status`` finds its journal through here.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable that names the home folder.
HOME_ENV = "HEADWATER_HOME"
JOURNAL_NAME = "journal.sqlite3"
CONFIG_NAME = "headwater.toml"


def _given_home() -> Path | None:
    given = os.environ.get(HOME_ENV, "").strip()
    return Path(given).expanduser() if given else None


def home() -> Path:
    """The folder for headwater's journal and config: ``$HEADWATER_HOME``, else the user data folder."""
    given = _given_home()
    if given is not None:
        return given
    import platformdirs

    return platformdirs.user_data_path("headwater", appauthor=False)


def default_journal() -> Path:
    """The journal file the command line uses: ``journal.sqlite3`` in :func:`home`."""
    return home() / JOURNAL_NAME


def default_config_path() -> Path:
    """``$HEADWATER_HOME/headwater.toml`` if that is set, else the file in the user config folder."""
    given = _given_home()
    if given is not None:
        return given / CONFIG_NAME
    import platformdirs

    return platformdirs.user_config_path("headwater", appauthor=False) / CONFIG_NAME
