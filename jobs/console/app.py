"""The console's routes: parse, call the store and the view functions the CLI uses, render.

Pages: the overview (`/`), the jobs list (`/jobs`, filters in the URL), a job (`/jobs/<id>`), a record
(`/records/<kind>/<id>`) and the triggers (`/triggers`). Actions are POSTs with a CSRF token: retry or cancel one
job, or every job the current filter finds after a confirmation that says how many. `/metrics` and `/healthz` are
for monitoring.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from config import defaults
from config.settings import ConsoleSettings
from config.text import shown
from connector.crm import Crm
from connector.errors import ConnectorError
from connector.platform import Platform
from jobs import kinds, views
from jobs.console import charts, security
from jobs.console.metrics import Metrics
from jobs.model import JobStatus, Target, TargetKind
from jobs.overview import count_where, health, overview
from jobs.scoring.history import history_of
from jobs.scoring.rules import RuleSet
from jobs.scoring.triggers import fired_by, firings_of
from jobs.service import UsageProblem, contact_view, parse_duration
from jobs.store import Actor, JobFilter, JobNotFound, JobStore, NotAllowed

HERE = Path(__file__).resolve().parent
FILTERS = ("status", "record", "tag", "operation", "result_code", "since", "batch", "text")


@dataclass
class ConsoleParts:
    """What the console reads and acts on; built by the composition root's caller (`connector console`)."""

    store: JobStore
    platform: Platform
    crm: Crm
    rules: RuleSet
    settings: ConsoleSettings
    metrics: Metrics
    api_of: Callable[[str], str]
    clock: Callable[[], float] = time.time


def job_filter(params: dict[str, str], *, limit: int = defaults.CONSOLE_PAGE, now: float) -> JobFilter:
    """The `JobFilter` of the jobs page's URL, as `jobs list` builds it from its options."""
    status = params.get("status", "").strip().lower() or None
    if status is not None and status not in {*(s.value for s in JobStatus), "retrying"}:
        raise UsageProblem(f"status is {shown(status)}; use pending, retrying, running, succeeded, failed or "
                           "cancelled.")
    operation = params.get("operation", "").strip() or None
    if operation is not None:
        try:
            operation = kinds.kind_named(operation).name
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
    since = params.get("since", "").strip()
    return JobFilter(
        status=status, target_id=params.get("record", "").strip() or None, tag=params.get("tag", "").strip() or None,
        operation=operation, result_code=params.get("result_code", "").strip().upper() or None,
        since=now - parse_duration(since) if since else None, batch=params.get("batch", "").strip() or None,
        text=params.get("text", "").strip() or None, limit=limit, after=params.get("after") or None,
    )


class Console:
    def __init__(self, parts: ConsoleParts) -> None:
        self.parts = parts
        self.store = parts.store
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                      undefined=jinja2.StrictUndefined)
        self.env.globals.update(stamp=views.stamp, ago=views.ago, what=views.what, record=views.record,
                                result=views.result, read_only=parts.settings.read_only, urlencode=urlencode,
                                change_text=views.change_text)

    def render(self, request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(request=request, csrf=request.state.csrf, who=request.state.who,
                                                  **context)
        return HTMLResponse(html, status_code=status_code)

    # --- pages ----------------------------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        view = overview(self.store, self.parts.api_of, now=self.parts.clock())
        return self.render(request, "overview.html", view=view, data=views.overview_json(view))

    def jobs(self, request: Request) -> Response:
        params = dict(request.query_params)
        try:
            query = job_filter(params, now=self.parts.clock())
            page = self.store.list(query)
        except (UsageProblem, NotAllowed, ConnectorError) as exc:
            return self.render(request, "jobs.html", status_code=400, problem=str(exc), jobs=[], next_url=None,
                               filters=_filters(params), operations=kinds.all_kinds(), done=None)
        filters = _filters(params)
        next_url = f"/jobs?{urlencode({**filters, 'after': page.next_cursor})}" if page.next_cursor else None
        return self.render(request, "jobs.html", jobs=page.jobs, next_url=next_url, filters=filters, problem=None,
                           operations=kinds.all_kinds(), done=params.get("done"))

    def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            job = self.store.get(job_id)
        except JobNotFound:
            return self.render(request, "error.html", status_code=404, problem=f"No job has the id {shown(job_id)}.")
        attempts = self.store.attempts(job.id)
        actions = self.store.audit(job.id)
        detail = views.job_detail_json(job, attempts, actions, fired_by(self.store, job))
        return self.render(request, "job.html", job=job, detail=detail, fields=views.job_fields(detail),
                           attempts=attempts, actions=actions, posts=self._posts(job), done=request.query_params.get(
                               "done"), problem=request.query_params.get("problem"))

    def _posts(self, job: Any) -> list[Any]:
        target = job.request.target if job.request else None
        if target is None:
            return []
        try:
            return [p for p in self.parts.crm.timeline(target.kind.value, target.id) if p.job_id == job.id]
        except ConnectorError:
            return []

    def record(self, request: Request) -> Response:
        kind, record_id = request.path_params["kind"], request.path_params["record_id"]
        if kind not in {k.value for k in TargetKind}:
            return self.render(request, "error.html", status_code=404,
                               problem=f"The record type {shown(kind)} is not contact, lead or account.")
        target = Target(kind=TargetKind(kind), id=record_id)
        try:
            view = contact_view(self.parts.platform, self.parts.crm, kind, record_id, store=self.store)
        except ConnectorError as exc:
            view = {"tags": {}, "timeline": [], "platform": self.parts.platform.name, "platform_id": record_id,
                    "platform_error": f"{exc.result_code}: {exc.message}"}
        history = history_of(self.store, target)
        try:
            page = self.store.list(JobFilter(target_id=record_id, limit=defaults.CONSOLE_PAGE,
                                             after=request.query_params.get("after") or None))
        except (NotAllowed, ConnectorError) as exc:
            return self.render(request, "error.html", status_code=400, problem=str(exc))
        next_url = f"/records/{kind}/{quote(record_id)}?{urlencode({'after': page.next_cursor})}" \
            if page.next_cursor else None
        return self.render(request, "record.html", kind=kind, record_id=record_id, view=view, history=history,
                           chart=charts.score_chart(history), jobs=page.jobs, next_url=next_url,
                           firings=firings_of(self.store, target))

    def find_record(self, request: Request) -> Response:
        kind = request.query_params.get("kind", "contact")
        record_id = request.query_params.get("id", "").strip()
        if not record_id:
            return RedirectResponse("/", status_code=303)
        # Quoted: an id's '#', '?' or '%' would otherwise end the path or be read as an escape.
        return RedirectResponse(f"/records/{quote(kind, safe='')}/{quote(record_id)}", status_code=303)

    def triggers(self, request: Request) -> Response:
        return self.render(request, "triggers.html", triggers=self.parts.rules.triggers,
                           firings=list(reversed(firings_of(self.store))), rules_path=self.parts.rules.path)

    # --- actions --------------------------------------------------------------------------------------------

    def confirm(self, request: Request) -> Response:
        """How many jobs a bulk action on the current filter will touch, and the button that does it."""
        params = dict(request.query_params)
        action = params.get("action", "")
        if action not in ("retry", "cancel"):
            return self.render(request, "error.html", status_code=400, problem="The action is retry or cancel.")
        try:
            query = self._bulk_filter(action, params)
            count = count_where(self.store, query) if query is not None else 0
        except (UsageProblem, NotAllowed, ConnectorError) as exc:
            return self.render(request, "error.html", status_code=400, problem=str(exc))
        return self.render(request, "confirm.html", action=action, count=count, filters=_filters(params))

    def _bulk_filter(self, action: str, params: dict[str, str]) -> JobFilter | None:
        """The filter of the page with the only status the action takes; None when the page's status rules the
        action out (a retry of succeeded jobs touches none)."""
        query = job_filter({**params, "after": ""}, now=self.parts.clock())
        allowed = ("failed",) if action == "retry" else ("pending", "retrying")
        if query.status is not None and query.status not in allowed:
            return None
        return dataclasses.replace(query, status=query.status or allowed[0], after=None)

    async def bulk(self, request: Request) -> Response:
        form = await request.form()
        params = {key: str(value) for key, value in form.items() if key in (*FILTERS, "action")}
        action = params.pop("action", "")
        refused = self._refused(request, form.get("csrf"))
        if refused is not None:
            return refused
        if action not in ("retry", "cancel"):
            return PlainTextResponse("The action is retry or cancel.", status_code=400)
        by = Actor(who=request.state.who, via="console")
        verb = "Retried" if action == "retry" else "Cancelled"
        try:
            query = self._bulk_filter(action, {**params})
            ids: list[str] = []
            if query is not None:
                # The person agreed to the number the confirmation showed. Jobs queued or finished since (or a
                # "created within" window that moved) change the set: act only on the one that was counted.
                found = await run_in_threadpool(count_where, self.store, query)
                counted = str(form.get("count", "")).strip()
                if str(found) != counted:
                    said = f", not the {counted} the confirmation counted" if counted.isdigit() else ""
                    done = (f"Nothing was {verb.lower()}: the filter finds {found} job{'s' if found != 1 else ''} "
                            f"now{said}. Look at them and confirm again.")
                    return RedirectResponse(f"/jobs?{urlencode({**_filters(params), 'done': done})}",
                                            status_code=303)
                act = self.store.retry_where if action == "retry" else self.store.cancel_where
                ids = await run_in_threadpool(act, query, by)
        except (UsageProblem, NotAllowed, ConnectorError) as exc:
            return PlainTextResponse(str(exc), status_code=400)
        done = f"{verb} {len(ids)} job{'s' if len(ids) != 1 else ''}."
        return RedirectResponse(f"/jobs?{urlencode({**_filters(params), 'done': done})}", status_code=303)

    async def act(self, request: Request) -> Response:
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        form = await request.form()
        refused = self._refused(request, form.get("csrf"))
        if refused is not None:
            return refused
        by = Actor(who=request.state.who, via="console")
        try:
            if action == "retry":
                await run_in_threadpool(self.store.retry, job_id, by)
                done = "Queued again."
            elif action == "cancel":
                job = await run_in_threadpool(self.store.cancel, job_id, by)
                done = job.message
            else:
                return PlainTextResponse("The action is retry or cancel.", status_code=404)
        except JobNotFound:
            return PlainTextResponse(f"No job has the id {shown(job_id)}.", status_code=404)
        except (NotAllowed, ConnectorError) as exc:
            return RedirectResponse(f"/jobs/{job_id}?{urlencode({'problem': str(exc)})}", status_code=303)
        return RedirectResponse(f"/jobs/{job_id}?{urlencode({'done': done})}", status_code=303)

    def _refused(self, request: Request, token: Any) -> Response | None:
        if self.parts.settings.read_only:
            return PlainTextResponse("The console is read-only (console.read_only): retry and cancel are off.",
                                     status_code=403)
        if not security.csrf_ok(request.cookies.get(security.CSRF_COOKIE), str(token) if token else None,
                                request.headers.get("origin"), request.headers.get("host")):
            return PlainTextResponse("This form is stale or came from another site; reload the page and try again.",
                                     status_code=403)
        return None

    # --- monitoring -----------------------------------------------------------------------------------------

    def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.parts.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def healthz(self, request: Request) -> Response:
        found = health(self.store, self.parts.settings.heartbeat_max_age, now=self.parts.clock())
        return PlainTextResponse(("ok: " if found.ok else "unhealthy: ") + found.reason,
                                 status_code=200 if found.ok else 503)


def _filters(params: dict[str, str]) -> dict[str, str]:
    """The filters a page keeps in its links, without the empty ones."""
    return {key: params[key].strip() for key in FILTERS if params.get(key, "").strip()}


class Guard(BaseHTTPMiddleware):
    """Authentication on every path but `/healthz`, and the CSRF cookie every page's forms repeat."""

    def __init__(self, app: Any, settings: ConsoleSettings) -> None:
        super().__init__(app)
        self.settings = settings

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path != "/healthz":
            who = security.authenticated(request.headers.get("authorization"), self.settings)
            if who is None:
                headers = {"WWW-Authenticate": security.REALM} if self.settings.password.get_secret_value() else {}
                return PlainTextResponse("Sign in: the console needs credentials.", status_code=401, headers=headers)
            request.state.who = who
        cookie = request.cookies.get(security.CSRF_COOKIE)
        request.state.csrf = cookie or security.new_csrf_token()
        response = await call_next(request)
        if cookie is None:
            response.set_cookie(security.CSRF_COOKIE, request.state.csrf, httponly=True, samesite="strict")
        return response


def make_app(parts: ConsoleParts) -> Starlette:
    console = Console(parts)
    routes = [
        Route("/", console.overview),
        Route("/jobs", console.jobs),
        Route("/jobs/confirm", console.confirm),
        Route("/jobs/bulk", console.bulk, methods=["POST"]),
        Route("/jobs/{job_id}", console.job),
        Route("/jobs/{job_id}/{action}", console.act, methods=["POST"]),
        Route("/records", console.find_record),
        Route("/records/{kind}/{record_id:path}", console.record),
        Route("/triggers", console.triggers),
        Route("/metrics", console.metrics),
        Route("/healthz", console.healthz),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Guard, settings=parts.settings)])
