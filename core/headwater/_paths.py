"""Where headwater keeps its files: the home folder and the command line's journal in it."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

#: The environment variable that names the home folder.
HOME_ENV = "HEADWATER_HOME"
JOURNAL_NAME = "journal.sqlite3"


def home() -> Path:
    """The folder for headwater's journal and config: ``$HEADWATER_HOME``, else the user data folder."""
    given = os.environ.get(HOME_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    return platformdirs.user_data_path("headwater", appauthor=False)


def default_journal() -> Path:
    """The journal file the command line uses: ``journal.sqlite3`` in :func:`home`."""
    return home() / JOURNAL_NAME
