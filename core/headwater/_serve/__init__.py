"""``headwater serve``: one long-running engine behind an HTTP API, an event stream and a web page.

The public part is :mod:`headwater._serve.run` (``BackgroundServer``, which
serves an engine on a thread); the command is ``headwater serve``. The
private modules, one concern each:

- ``_state``: the token file and the state file through which the command
  line finds a running server (no web framework needed);
- ``_security``: the bind check and the ASGI guard (Host, Origin, token,
  CORS, security headers);
- ``_live``: the server's index of the records, fed by the engine's change
  feed, and the event stream's log and fan-out;
- ``_views``: the values the API sends, and their JSON encoding;
- ``_api``: the JSON API (``/api/v1``) and the page, as a Litestar application.

Everything but ``_state`` needs the ``serve`` extra
(``pip install 'headwater[serve]'``). See ``docs/serve.md``.
"""
