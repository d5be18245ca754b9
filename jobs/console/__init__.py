"""The web console: pages for support staff and operators, `/metrics` and `/healthz`.

Server-rendered with Jinja2 (autoescaping on: tags, messages and record ids come from users) and htmx, vendored as
one file under `static/`; no build step, nothing fetched at run time. Routes are thin like CLI commands: they
build the same `JobFilter` as `jobs list` and call the same store and view functions. `security` holds the
authentication, the CSRF check and the rule that another address than loopback needs credentials.
"""
