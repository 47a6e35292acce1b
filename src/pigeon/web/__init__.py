"""Seeing the mail: the web UI, the HTTP API and the metrics.

FastAPI (on Starlette, served by uvicorn) rather than bare Starlette: the API's OpenAPI
document is generated from the same typed signatures and models that validate requests and
shape responses, so the published document cannot drift from what the server does, and
schemathesis tests the server against it. The UI is server-rendered Jinja2 with one small
script, so nothing is built on the user's machine.

Where it runs: in the worker process ``w0``, on the same event loop as its SMTP sessions.
Only one process may own the HTTP port, and the supervisor is deliberately a plain
synchronous process that holds no mail and no event loop (if a worker dies, the supervisor
must stay simple enough not to). ``w0`` has everything the UI needs: the queue through
``pigeon.queue.admin`` (whose doorbell reaches every worker), the Maildirs, which any process
may read, its live sessions, and the metrics of all workers through prometheus-client's
multiprocess files. When ``w0`` is restarted, the UI comes back with it.

Modules: ``app`` (the application), ``api`` (``/api``), ``ui`` (pages), ``ops``
(``/metrics``, ``/healthz``), ``live`` (server-sent events), ``security`` (login, CSRF,
headers), ``access`` (who may do what), ``mailboxes`` (reading Maildirs), ``store`` (web.db:
login sessions, API tokens), ``service`` (running it inside a worker).
"""

from .service import WebService, start_web

__all__ = ["WebService", "start_web"]
