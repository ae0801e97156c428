"""``headwater serve``: one long-running engine behind an HTTP API, an event stream and a web page.

The modules, one concern each:

- :mod:`headwater.serve.state`: the token file and the state file through
  which the command line finds a running server (no web framework needed);
- :mod:`headwater.serve.security`: the bind check and the ASGI guard (Host,
  Origin, token, CORS, security headers);
- :mod:`headwater.serve.live`: the server's view of the records, fed by the
  engine's change feed, and the event stream's log and fan-out;
- :mod:`headwater.serve.api`: the JSON API (``/api/v1``) and the page, as a
  Litestar application;
- :mod:`headwater.serve.run`: running it on uvicorn, in the foreground or
  on a thread.

Everything but :mod:`~headwater.serve.state` needs the ``serve`` extra
(``pip install 'headwater[serve]'``). See ``docs/serve.md``.
"""
