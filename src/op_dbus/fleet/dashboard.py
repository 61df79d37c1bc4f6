"""The web dashboard under /ui/: login, fleet overview, host, alerts and rollout pages, each with a JSON twin.

Security: every page needs a session (server-side, cookie HttpOnly + SameSite=Strict, Secure over TLS); every
POST carries the session's CSRF token; pages are Jinja2 templates with autoescape and a strict Content-Security-
Policy (scripts and styles only from /ui/static/, nothing inline); halt/resume need the operator role.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import itertools
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine, and_, case, exists, func, literal, or_, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from op_dbus.errors import InvalidInput
from op_dbus.fleet import db
from op_dbus.fleet.fleetview import FleetView
from op_dbus.fleet.rollout import Rollouts
from op_dbus.fleet.users import RateLimited, Session, Users
from op_dbus.fleet.witness import Witness

HERE = Path(__file__).parent
COOKIE = "opdbus_session"
PAGE_SIZE = 50
MAX_FORM = 8 * 1024
STATUSES = ("ok", "drifting", "failing", "stale", "equivocating", "unknown", "revoked")
SORTS = {"name", "status", "received", "drift", "commit"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                    "X-Frame-Options": "DENY", "Cache-Control": "no-store"}


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "never"
    seconds = int((now or time.time()) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{max(seconds, 0)} s ago"


class Dashboard:
    """The data behind the pages, in SQL so the overview stays fast at fleet scale."""

    def __init__(self, witness: Witness) -> None:
        self.witness = witness
        self.engine: Engine = witness.engine
        self.view = FleetView(self.engine)
        self.rollouts = Rollouts(self.engine)
        self.users = Users(self.engine)

    @staticmethod
    def _status_column() -> Any:
        h, s, a = db.hosts, db.host_summary, db.alerts

        def open_alert(kind: str) -> Any:
            return exists(select(literal(1)).where(a.c.host == h.c.name, a.c.kind == kind, a.c.cleared.is_(None)))

        return case((h.c.revoked.is_not(None), "revoked"), (open_alert("equivocation"), "equivocating"),
                    (s.c.last_result == "failed", "failing"), (open_alert("stale"), "stale"),
                    (s.c.drift > 0, "drifting"), (s.c.host.is_(None), "unknown"), else_="ok")

    def set_group(self, group: str, hosts: list[str], *, member: bool = True) -> int:
        """Put `hosts` into `group` (or take them out); returns how many changed. Unknown hosts are an error."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", group):
            raise InvalidInput(f"group {group!r}: letters, digits and . _ - (up to 64)")
        g = db.host_groups
        with self.engine.begin() as conn:
            known = {r.name for r in conn.execute(select(db.hosts.c.name).where(db.hosts.c.name.in_(hosts)))}
            unknown = [h for h in hosts if h not in known]
            if unknown:
                raise InvalidInput(f"not enrolled: {', '.join(unknown)}")
            current = {r.host for r in conn.execute(select(g.c.host).where(g.c.grp == group, g.c.host.in_(hosts)))}
            if member:
                rows = [{"grp": group, "host": h} for h in sorted(set(hosts) - current)]
                if rows:
                    conn.execute(g.insert(), rows)
                return len(rows)
            return int(conn.execute(g.delete().where(g.c.grp == group, g.c.host.in_(hosts))).rowcount)

    def groups(self) -> list[str]:
        with db.reading(self.engine) as conn:
            return [str(r[0]) for r in conn.execute(select(db.host_groups.c.grp).distinct().order_by(db.host_groups.c.grp))]

    def overview(self, *, status: str = "", text: str = "", group: str = "", sort: str = "name", desc: bool = False,
                 page: int = 1) -> dict[str, Any]:
        h, s, w = db.hosts, db.host_summary, db.witness_state
        status_col = self._status_column().label("status")
        joined = h.outerjoin(s, s.c.host == h.c.name).outerjoin(w, w.c.origin == h.c.origin)
        where = []
        if text:
            pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append(or_(h.c.name.like(pattern, escape="\\"), s.c.commit.like(pattern, escape="\\")))
        if group:
            where.append(exists(select(literal(1)).where(db.host_groups.c.host == h.c.name,
                                                         db.host_groups.c.grp == group)))
        base = select(h.c.name, status_col).select_from(joined).where(and_(*where)).subquery()
        with db.reading(self.engine) as conn:
            counts = {str(k): int(n) for k, n in conn.execute(select(base.c.status, func.count()).group_by(base.c.status))}
            if status:
                where.append(status_col == status)
            order = {"name": h.c.name, "status": status_col, "received": s.c.received, "drift": s.c.drift,
                     "commit": s.c.commit}[sort]
            order_by = [order.desc() if desc else order.asc()]
            if sort != "name":
                order_by.append(h.c.name.asc())
            total = sum(counts.values()) if not status else counts.get(status, 0)
            pages = max(1, -(-total // PAGE_SIZE))
            page = min(max(1, page), pages)
            rows = conn.execute(
                select(h.c.name, status_col, s.c.received, s.c.mode, s.c.commit, s.c.drift, s.c.drift_since,
                       s.c.last_result, s.c.head_index, w.c.size, w.c.updated)
                .select_from(joined).where(and_(*where)).order_by(*order_by)
                .limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).all()
            banner = [dict(r._mapping) for r in conn.execute(
                select(db.rollouts.c.commit, db.rollouts.c.state, db.rollouts.c.reason)
                .where(db.rollouts.c.state.in_(("running", "halted"))).order_by(db.rollouts.c.created))]
        hosts = [{"name": r.name, "status": r.status, "last_report": r.received, "mode": r.mode, "commit": r.commit,
                  "drift": int(r.drift or 0), "drift_since": r.drift_since, "last_apply": r.last_result,
                  "head_index": r.head_index, "witnessed_size": int(r.size or 0), "witnessed_at": r.updated}
                 for r in rows]
        return {"counts": {k: counts.get(k, 0) for k in STATUSES}, "total": total, "page": page, "pages": pages,
                "page_size": PAGE_SIZE, "hosts": hosts, "rollouts": banner, "groups": self.groups(),
                "query": {"status": status, "q": text, "group": group, "sort": sort, "desc": desc}}

    def host(self, name: str) -> dict[str, Any] | None:
        found = self.view.host(name, history=200)
        if found is None:
            return None
        a = db.alerts
        with db.reading(self.engine) as conn:
            alerts = [dict(r._mapping) for r in conn.execute(select(a).where(a.c.host == name)
                                                             .order_by(a.c.id.desc()).limit(100))]
        found["alerts"] = alerts
        return found

    def alerts(self) -> dict[str, Any]:
        evidence = [{k: v for k, v in e.items() if k in ("id", "origin", "kind", "detail", "time")}
                    for e in self.witness.evidence()]
        return {"alerts": self.witness.alerts(), "evidence": evidence}

    def evidence_file(self, ident: int) -> str | None:
        """The two signed checkpoints that contradict each other (and the proof, if one was sent), as text."""
        with db.reading(self.engine) as conn:
            row = conn.execute(select(db.evidence).where(db.evidence.c.id == ident)).first()
        if row is None:
            return None
        parts = [f"# op-dbus witness evidence {row.id}: {row.kind} for {row.origin}\n# {row.detail}\n",
                 "# checkpoint held by the witness:\n", row.stored or "(none)\n",
                 "# checkpoint submitted:\n", row.submitted]
        if row.proof:
            parts += ["# consistency proof submitted:\n", row.proof if row.proof.endswith("\n") else row.proof + "\n"]
        return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def drift_chart(history: list[dict[str, Any]], width: int = 720, height: int = 160) -> str:
    """An SVG of drift counts over time from footprint history (oldest left); red dots where drift appears,
    green where a report shows it repaired. Built here, with presentation attributes only (CSP: no inline style)."""
    points = sorted(((h["received"], int(h["footprint"].get("drift", 0) or 0)) for h in history), key=lambda p: p[0])
    pad = 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             'role="img" aria-labelledby="drift-title"><title id="drift-title">Drift over time: '
             f'{len(points)} reports</title>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - 10}" y2="{height - pad}" stroke="#555"/>',
             f'<line x1="{pad}" y1="10" x2="{pad}" y2="{height - pad}" stroke="#555"/>']
    if points:
        t0, t1 = points[0][0], points[-1][0]
        top = max(1, max(p[1] for p in points))
        span = max(t1 - t0, 1e-9)

        def xy(t: float, v: int) -> tuple[float, float]:
            x = pad + (t - t0) / span * (width - pad - 20) if len(points) > 1 else width / 2
            return round(x, 1), round(height - pad - v / top * (height - pad - 20), 1)

        coords = [xy(t, v) for t, v in points]
        # A step line: a host's drift count holds from one report until the next.
        steps = [coords[0]] + [p for a, b in itertools.pairwise(coords) for p in ((b[0], a[1]), b)]
        parts.append('<polyline fill="none" stroke="#1f5fa8" stroke-width="2" points="'
                     + " ".join(f"{x},{y}" for x, y in steps) + '"/>')
        previous = 0
        for (t, v), (x, y) in zip(points, coords, strict=True):
            colour = "#c0392b" if v > 0 and previous == 0 else "#1e8449" if v == 0 and previous > 0 else "#1f5fa8"
            parts.append(f'<circle cx="{x}" cy="{y}" r="4" fill="{colour}"><title>{html.escape(_when(t))}: '
                         f'{v} drift</title></circle>')
            previous = v
        parts.append(f'<text x="4" y="18" font-size="11" fill="#222">{top}</text>'
                     f'<text x="4" y="{height - pad}" font-size="11" fill="#222">0</text>'
                     f'<text x="{pad}" y="{height - 8}" font-size="11" fill="#222">{html.escape(_when(t0))}</text>'
                     f'<text x="{width - 10}" y="{height - 8}" font-size="11" fill="#222" text-anchor="end">'
                     f'{html.escape(_when(t1))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def routes(witness: Witness) -> list[Route | Mount]:
    data = Dashboard(witness)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      auto_reload=False)
    env.filters["when"] = _when
    env.filters["ago"] = _ago

    def headers(extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**SECURITY_HEADERS, **(extra or {})}

    def render(request: Request, name: str, context: dict[str, Any], status: int = 200,
               session: Session | None = None) -> Response:
        live = request.headers.get("x-live") == "1"
        # The ETag covers the data, not the HTML, so "N s ago" ticking by does not defeat the 304s of the polls.
        data_only = {k: v for k, v in context.items() if not callable(v) and k != "now"}
        data_only["_who"] = None if session is None else [session.user, session.role, session.csrf, live, name]
        etag = '"' + hashlib.sha256(json.dumps(data_only, sort_keys=True, default=str).encode()).hexdigest()[:32] + '"'
        if live and request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers({"ETag": etag}))
        body = env.get_template(f"_{name}" if live else name).render(request=request, session=session, **context)
        return Response(body, status_code=status, media_type="text/html", headers=headers({"ETag": etag}))

    def json_reply(request: Request, doc: Any) -> Response:
        body = json.dumps(doc, sort_keys=True, default=str).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers({"ETag": etag}))
        return Response(body, media_type="application/json", headers=headers({"ETag": etag}))

    async def current(request: Request) -> Session | None:
        cookie = request.cookies.get(COOKIE)
        return None if not cookie else await run_in_threadpool(data.users.session, cookie)

    async def form(request: Request) -> dict[str, str]:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                raise InvalidInput("form too large")
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), max_num_fields=20).items()}

    def to_login(request: Request) -> Response:
        if request.url.path.startswith("/ui/api/") or request.headers.get("x-live") == "1":
            return PlainTextResponse("log in first\n", status_code=401, headers=headers())
        return RedirectResponse("/ui/login?" + urlencode({"next": request.url.path}), status_code=303, headers=headers())

    def same_origin(request: Request) -> bool:
        """A POST must come from our own pages: an Origin header, when the browser sends one, must be ours
        (the Referrer-Policy is same-origin, not no-referrer, because the latter makes browsers send "null")."""
        origin = request.headers.get("origin")
        return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"

    async def login_page(request: Request) -> Response:
        return render(request, "login.html", {"error": None, "next": request.query_params.get("next", "/ui/")})

    async def login(request: Request) -> Response:
        if not same_origin(request):
            return PlainTextResponse("cross-site login refused\n", status_code=403, headers=headers())
        try:
            fields = await form(request)
        except InvalidInput:
            return PlainTextResponse("form too large\n", status_code=413, headers=headers())
        target = fields.get("next", "/ui/")
        if not target.startswith("/ui/") or target.startswith("//"):
            target = "/ui/"
        client = request.client.host if request.client else "?"
        try:
            cookie, session = await run_in_threadpool(data.users.login, fields.get("user", ""),
                                                      fields.get("password", ""), client)
        except RateLimited:
            return render(request, "login.html", {"error": "Too many failed logins: wait a few minutes.",
                                                  "next": target}, status=429)
        except PermissionError:
            return render(request, "login.html", {"error": "Unknown user or wrong password.", "next": target},
                          status=401)
        reply = RedirectResponse(target, status_code=303, headers=headers())
        reply.set_cookie(COOKIE, cookie, max_age=int(session.expires - time.time()), path="/ui/", httponly=True,
                         samesite="strict", secure=request.url.scheme == "https")
        return reply

    async def logout(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return to_login(request)
        fields = await form(request)
        if not hmac.compare_digest(fields.get("csrf", ""), session.csrf) or not same_origin(request):
            return PlainTextResponse("missing or wrong CSRF token\n", status_code=403, headers=headers())
        await run_in_threadpool(data.users.logout, request.cookies.get(COOKIE, ""))
        reply = RedirectResponse("/ui/login", status_code=303, headers=headers())
        reply.delete_cookie(COOKIE, path="/ui/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return reply

    def overview_query(request: Request) -> dict[str, Any]:
        q = request.query_params
        status = q.get("status", "")
        sort = q.get("sort", "name")
        page = q.get("page", "1")
        return {"status": status if status in STATUSES else "", "text": q.get("q", "")[:200],
                "group": q.get("group", "")[:255],
                "sort": sort if sort in SORTS else "name", "desc": q.get("desc") == "1",
                "page": int(page) if page.isdigit() else 1}

    def page_link(query: dict[str, Any], **change: Any) -> str:
        merged = {"status": query["status"], "q": query["q"], "group": query["group"], "sort": query["sort"],
                  "desc": "1" if query["desc"] else "", "page": 1, **change}
        return "/ui/?" + urlencode({k: v for k, v in merged.items() if v not in ("", None)})

    async def overview(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return to_login(request)
        started = time.perf_counter()
        doc = await run_in_threadpool(lambda: data.overview(**overview_query(request)))
        reply = render(request, "overview.html", {"o": doc, "link": page_link, "now": time.time()}, session=session)
        reply.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        return reply

    async def overview_json(request: Request) -> Response:
        if await current(request) is None:
            return to_login(request)
        return json_reply(request, await run_in_threadpool(lambda: data.overview(**overview_query(request))))

    async def host_page(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return to_login(request)
        found = await run_in_threadpool(data.host, request.path_params["name"])
        if found is None:
            return render(request, "missing.html", {"what": f"host {request.path_params['name']}"}, status=404,
                          session=session)
        return render(request, "host.html", {"h": found, "chart": drift_chart(found["history"]), "now": time.time()},
                      session=session)

    async def host_json(request: Request) -> Response:
        if await current(request) is None:
            return to_login(request)
        found = await run_in_threadpool(data.host, request.path_params["name"])
        return json_reply(request, found) if found is not None else PlainTextResponse("no such host\n", 404,
                                                                                       headers=headers())

    async def alerts_page(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return to_login(request)
        return render(request, "alerts.html", {"a": await run_in_threadpool(data.alerts)}, session=session)

    async def alerts_json(request: Request) -> Response:
        if await current(request) is None:
            return to_login(request)
        return json_reply(request, await run_in_threadpool(data.alerts))

    async def evidence(request: Request) -> Response:
        if await current(request) is None:
            return to_login(request)
        text = await run_in_threadpool(data.evidence_file, int(request.path_params["ident"]))
        if text is None:
            return PlainTextResponse("no such evidence\n", status_code=404, headers=headers())
        return PlainTextResponse(text, headers=headers({
            "Content-Disposition": f'attachment; filename="evidence-{int(request.path_params["ident"])}.txt"'}))

    async def rollouts_page(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return to_login(request)
        rows = await run_in_threadpool(data.rollouts.all)
        done = request.query_params.get("done", "")
        flash = done if re.fullmatch(r"(halt|resume) [0-9a-f]{7,64}", done) else None  # no text chosen by a link
        context = {"rollouts": list(reversed(rows)), "flash": flash}
        return render(request, "rollouts.html", context, session=session)

    async def rollouts_json(request: Request) -> Response:
        if await current(request) is None:
            return to_login(request)
        return json_reply(request, await run_in_threadpool(data.rollouts.all))

    async def rollout_action(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return to_login(request)
        try:
            fields = await form(request)
        except InvalidInput:
            return PlainTextResponse("form too large\n", status_code=413, headers=headers())
        if not hmac.compare_digest(fields.get("csrf", ""), session.csrf) or not same_origin(request):
            return PlainTextResponse("missing or wrong CSRF token\n", status_code=403, headers=headers())
        if session.role != "operator":
            return PlainTextResponse("only operators may halt or resume rollouts\n", status_code=403, headers=headers())
        action = request.path_params["action"]
        state = {"halt": "halted", "resume": "running"}.get(action)
        if state is None:
            return PlainTextResponse("unknown action (halt, resume)\n", status_code=404, headers=headers())
        reason = f"halted by {session.user} from the dashboard" if action == "halt" else None
        try:
            await run_in_threadpool(data.rollouts.set_state, request.path_params["commit"], state, reason)
        except InvalidInput as exc:
            return PlainTextResponse(f"{exc.message}\n", status_code=404, headers=headers())
        return RedirectResponse("/ui/rollouts?" + urlencode({"done": f"{action} {request.path_params['commit']}"}),
                                status_code=303, headers=headers())

    async def root(_request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    class Static(StaticFiles):
        """Our own assets, with the same headers as the pages."""

        async def get_response(self, path: str, scope: Any) -> Response:
            reply = await super().get_response(path, scope)
            reply.headers.update({k: v for k, v in SECURITY_HEADERS.items() if k != "Cache-Control"})
            return reply

    return [
        Route("/ui", root, methods=["GET"]),
        Route("/ui/", overview, methods=["GET"]),
        Route("/ui/login", login_page, methods=["GET"]),
        Route("/ui/login", login, methods=["POST"]),
        Route("/ui/logout", logout, methods=["POST"]),
        Route("/ui/api/overview", overview_json, methods=["GET"]),
        Route("/ui/hosts/{name}", host_page, methods=["GET"]),
        Route("/ui/api/hosts/{name}", host_json, methods=["GET"]),
        Route("/ui/alerts", alerts_page, methods=["GET"]),
        Route("/ui/api/alerts", alerts_json, methods=["GET"]),
        Route("/ui/evidence/{ident:int}", evidence, methods=["GET"]),
        Route("/ui/rollouts", rollouts_page, methods=["GET"]),
        Route("/ui/api/rollouts", rollouts_json, methods=["GET"]),
        Route("/ui/rollouts/{commit}/{action}", rollout_action, methods=["POST"]),
        Mount("/ui/static", app=Static(directory=HERE / "static"), name="static"),
    ]
