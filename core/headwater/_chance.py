"""The engine's own random numbers, apart from the shared instance of :mod:`random`.

A host that seeds :mod:`random` (``random.seed(0)`` in an application,
Hypothesis in a test) neither repeats the engine's ids nor finds its own
sequence moved by the engine's draws; a forked child (a worker process) gets
a new seed, as :mod:`random`'s shared instance does.
"""

from __future__ import annotations

import os
import random

#: Seeded from the system at import and again in every forked child. Not for secrets.
rng = random.Random()

if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=rng.seed)
