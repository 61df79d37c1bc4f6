"""The collector's HTTP interface (Starlette) and its server (uvicorn), with limits on connections, sizes and time."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from op_dbus.errors import InvalidInput
from op_dbus.fleet import db
from op_dbus.fleet.fleetview import MAX_FOOTPRINT, ROLES, FleetView
from op_dbus.fleet.rollout import Rollouts
from op_dbus.fleet.witness import MAX_BODY, Witness
from op_dbus.ledger import keys
from op_dbus.ledger.cosignature import WitnessSigner

DEFAULT_LISTEN = "127.0.0.1:8470"
DEFAULT_KEY = "/var/lib/op-dbus-collector/witness.key"
BODY_DEADLINE = 10.0  # seconds a client may take to send its whole request body
MAX_CONNECTIONS = 256


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes (before reading them, when Content-Length says so)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


STALE_SWEEP = 60.0  # seconds between looks for silent hosts


def build_app(witness: Witness, *, stale_after: float = 3600.0) -> Starlette:
    view = FleetView(witness.engine)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async def sweep() -> None:
            while True:
                with contextlib.suppress(Exception):  # a database hiccup must not end the sweeps
                    await run_in_threadpool(view.sweep_stale, stale_after)
                await asyncio.sleep(min(STALE_SWEEP, stale_after))

        task = asyncio.create_task(sweep())
        try:
            yield
        finally:
            task.cancel()

    async def authorized(request: Request, roles: tuple[str, ...] = ROLES) -> Response | None:
        """None when the request carries an API token of one of `roles`; else the 401/403 to send."""
        token = _bearer(request)
        if token is None:
            return PlainTextResponse("an API token is needed (Authorization: Bearer ...)\n", status_code=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        role = await run_in_threadpool(view.role_of, token)
        if role is None:
            return PlainTextResponse("unknown API token\n", status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if role not in roles:
            return PlainTextResponse(f"the {role} role may not do this\n", status_code=403)
        return None

    async def footprint(request: Request) -> Response:
        try:
            body = await asyncio.wait_for(read_body(request, MAX_FOOTPRINT), BODY_DEADLINE)
        except BodyTooLarge:
            return PlainTextResponse("footprint too large\n", status_code=413)
        except TimeoutError:
            return PlainTextResponse("request body not received in time\n", status_code=408)
        reply = await run_in_threadpool(view.add_footprint, body)
        return Response(reply.body, status_code=reply.status, media_type=reply.content_type)

    async def status(request: Request) -> Response:
        denied = await authorized(request)
        if denied is not None:
            return denied
        stale = float(request.query_params.get("stale_after", "3600") or 3600)
        return JSONResponse(await run_in_threadpool(lambda: witness.status(stale_after=stale)))

    async def hosts(request: Request) -> Response:
        denied = await authorized(request)
        return denied or JSONResponse(await run_in_threadpool(view.hosts))

    async def host(request: Request) -> Response:
        denied = await authorized(request)
        if denied is not None:
            return denied
        found = await run_in_threadpool(view.host, request.path_params["name"])
        return JSONResponse(found) if found is not None else PlainTextResponse("no such host\n", status_code=404)

    async def alerts(request: Request) -> Response:
        denied = await authorized(request)
        return denied or JSONResponse(await run_in_threadpool(witness.alerts))

    rollouts = Rollouts(witness.engine)

    async def gate(request: Request) -> Response:
        try:
            body = await asyncio.wait_for(read_body(request, 16 * 1024), BODY_DEADLINE)
        except BodyTooLarge:
            return PlainTextResponse("request body too large\n", status_code=413)
        except TimeoutError:
            return PlainTextResponse("request body not received in time\n", status_code=408)
        reply = await run_in_threadpool(rollouts.gate, body)
        return Response(reply.body, status_code=reply.status, media_type=reply.content_type)

    async def rollout_list(request: Request) -> Response:
        denied = await authorized(request)
        return denied or JSONResponse(await run_in_threadpool(rollouts.all))

    async def rollout_start(request: Request) -> Response:
        denied = await authorized(request, ("operator",))
        if denied is not None:
            return denied
        try:
            doc = json.loads(await asyncio.wait_for(read_body(request, 64 * 1024), BODY_DEADLINE))
            commit, waves = doc["commit"], doc.get("waves", [])
            if not isinstance(commit, str) or not isinstance(waves, list) or not all(isinstance(w, str) for w in waves):
                raise TypeError
        except (ValueError, KeyError, TypeError, BodyTooLarge, TimeoutError):
            return PlainTextResponse('expected JSON {"commit": "...", "waves": ["host,host", "25%", ...]}\n',
                                     status_code=400)
        try:
            return JSONResponse(await run_in_threadpool(rollouts.start, commit, waves))
        except InvalidInput as exc:
            return PlainTextResponse(f"{exc.message}\n", status_code=400)

    async def rollout_control(request: Request) -> Response:
        denied = await authorized(request, ("operator",))
        if denied is not None:
            return denied
        action = request.path_params["action"]
        state = {"halt": "halted", "resume": "running"}.get(action)
        if state is None:
            return PlainTextResponse("unknown action (halt, resume)\n", status_code=404)
        reason = f"{action} by an operator" if action == "halt" else None
        try:
            return JSONResponse(await run_in_threadpool(rollouts.set_state, request.path_params["commit"], state, reason))
        except InvalidInput as exc:
            return PlainTextResponse(f"{exc.message}\n", status_code=404)

    async def add_checkpoint(request: Request) -> Response:
        try:
            body = await asyncio.wait_for(read_body(request, MAX_BODY), BODY_DEADLINE)
        except BodyTooLarge:
            return PlainTextResponse(f"request body over {MAX_BODY} bytes\n", status_code=413)
        except TimeoutError:
            return PlainTextResponse("request body not received in time\n", status_code=408)
        reply = await run_in_threadpool(witness.add_checkpoint, body)
        return Response(reply.body, status_code=reply.status, media_type=reply.content_type)

    async def join(request: Request) -> Response:
        try:
            body = await asyncio.wait_for(read_body(request, 16 * 1024), BODY_DEADLINE)
            doc = json.loads(body)
            token, name, vkey = doc["token"], doc["name"], doc["vkey"]
            if not all(isinstance(v, str) for v in (token, name, vkey)):
                raise TypeError
        except BodyTooLarge:
            return PlainTextResponse("request body too large\n", status_code=413)
        except TimeoutError:
            return PlainTextResponse("request body not received in time\n", status_code=408)
        except (ValueError, KeyError, TypeError):
            return PlainTextResponse('expected JSON {"token": ..., "name": ..., "vkey": ...}\n', status_code=400)
        try:
            host = await run_in_threadpool(witness.join, token, name, vkey)
        except PermissionError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=403)
        except InvalidInput as exc:
            return PlainTextResponse(f"{exc.message}\n", status_code=400)
        signer = witness.signer
        return JSONResponse({"name": host.name, "origin": host.origin,
                             "witness": signer.verifier.vkey if signer is not None else None})

    async def health(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    from op_dbus.fleet.dashboard import routes as dashboard_routes

    return Starlette(lifespan=lifespan, routes=[
        *dashboard_routes(witness),
        Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
        Route("/v1/join", join, methods=["POST"]),
        Route("/v1/footprint", footprint, methods=["POST"]),
        Route("/v1/status", status, methods=["GET"]),
        Route("/v1/hosts", hosts, methods=["GET"]),
        Route("/v1/hosts/{name}", host, methods=["GET"]),
        Route("/v1/alerts", alerts, methods=["GET"]),
        Route("/v1/rollout/gate", gate, methods=["POST"]),
        Route("/v1/rollouts", rollout_list, methods=["GET"]),
        Route("/v1/rollouts", rollout_start, methods=["POST"]),
        Route("/v1/rollouts/{commit}/{action}", rollout_control, methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
    ])


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    loopback: bool


def parse_listen(value: str) -> Listen:
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535 or not host:
        raise InvalidInput(f"--listen {value!r}: expected HOST:PORT (for example 127.0.0.1:8470)")
    host = host.strip("[]")
    if host == "localhost":
        return Listen("127.0.0.1", int(port_s), True)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(f"--listen {value!r}: give an IP address, not a name") from None
    return Listen(host, int(port_s), address.is_loopback)


def open_signer(engine: Any, key_path: Path, name: str | None) -> WitnessSigner:
    """The witness key (created 0600 on first start) and its name, which is fixed in the database on first start."""
    if not key_path.parent.exists():
        key_path.parent.mkdir(mode=0o700, parents=True)
    private, _ = keys.load_or_create_private_key(key_path, create=True)
    chosen = db.set_setting_once(engine, "witness_name", name or f"op-dbus-collector/{socket.gethostname()}")
    if name is not None and name != chosen:
        raise InvalidInput(f"--name {name!r}: this collector's witness is already named {chosen!r}")
    return WitnessSigner(chosen, private)


def serve(db_url: str, listen: str, key_path: Path, *, name: str | None = None, tls_cert: str | None = None,
          tls_key: str | None = None, workers: int = 1, stale_after: float = 3600.0) -> None:
    import uvicorn

    where = parse_listen(listen)
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    if not where.loopback and tls_cert is None:
        raise InvalidInput(f"--listen {listen}: plain HTTP is only served on loopback",
                           hint="give --tls-cert and --tls-key to listen on another address")
    for path in (tls_cert, tls_key):
        if path is not None:
            st = Path(path).stat()
            keys.check_file(st, Path(path), "TLS file", secret=path == tls_key)
    engine = db.make_engine(db_url)
    db.migrate(engine)
    signer = open_signer(engine, key_path, name)
    engine.dispose()
    config: dict[str, Any] = {
        "host": where.host, "port": where.port, "limit_concurrency": MAX_CONNECTIONS, "backlog": 512,
        "timeout_keep_alive": 15, "timeout_graceful_shutdown": 10, "h11_max_incomplete_event_size": 16 * 1024,
        "server_header": False, "date_header": False, "access_log": False, "proxy_headers": False,
        "ssl_certfile": tls_cert, "ssl_keyfile": tls_key,
    }
    if workers > 1:
        # Each worker process builds its own app (and database pool) from the environment.
        import os

        os.environ.update({"OP_DBUS_COLLECTOR_DB": db_url, "OP_DBUS_COLLECTOR_KEY": str(key_path),
                           "OP_DBUS_COLLECTOR_NAME": signer.name, "OP_DBUS_COLLECTOR_STALE": str(stale_after)})
        uvicorn.run("op_dbus.fleet.app:app_from_environment", factory=True, workers=workers, **config)
    else:
        uvicorn.run(build_app(Witness(db.make_engine(db_url), signer), stale_after=stale_after), **config)


def app_from_environment() -> Starlette:
    import os

    engine = db.make_engine(os.environ["OP_DBUS_COLLECTOR_DB"])
    signer = open_signer(engine, Path(os.environ["OP_DBUS_COLLECTOR_KEY"]), os.environ["OP_DBUS_COLLECTOR_NAME"])
    return build_app(Witness(engine, signer), stale_after=float(os.environ.get("OP_DBUS_COLLECTOR_STALE", "3600")))
