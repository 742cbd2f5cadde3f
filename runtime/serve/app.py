"""The ASGI app: the kiosk page at ``/``, the realtime WebSocket, ``/healthz`` and ``/metrics``.

``create_app(model, options)`` takes an already loaded ``SharedModel``, so whatever hosts the app
(``bcaudio serve`` on uvicorn, or a replica of a serving framework) loads the package once and
serves every connection from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from bcaudio.runtime.serve.connection import Connection
from bcaudio.runtime.serve.logs import LOGGER
from bcaudio.runtime.serve.metrics import ServeMetrics
from bcaudio.runtime.serve.model import SharedModel
from bcaudio.runtime.serve.protocol import Limits, ProtocolError, parse_event
from bcaudio.runtime.serve.security import origin_ok, token_ok

REALTIME_PATH = "/v1/realtime"
POLL_SECONDS = 0.05
CLOSE_POLICY, CLOSE_TRY_AGAIN = 1008, 1013  # RFC 6455 close codes: policy violation, try again later


@dataclass
class ServeOptions:
    max_sessions: int = 8
    token: str | None = None
    allowed_origins: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)


def static_dir() -> Path:
    return Path(str(resources.files("bcaudio.runtime.serve") / "static"))


def create_app(model: SharedModel, options: ServeOptions | None = None) -> FastAPI:
    """An app serving ``model``; the caller owns the model (and closes it after the app stops)."""
    options = options or ServeOptions()
    log = logging.getLogger(LOGGER)
    metrics = ServeMetrics()
    app = FastAPI(title="bcaudio serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model, app.state.options, app.state.metrics = model, options, metrics
    active: set[Connection] = set()
    app.state.active = active
    pending = [0]  # connections accepted but still being set up (counted against --max-sessions)
    page = (static_dir() / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "model": model.package.name, "sessions": len(active),
                             "max_sessions": options.max_sessions, "queued_steps": model.scheduler.waiting,
                             "batch": None if model.batcher is None else model.batcher.summary(),
                             "profile": model.profile.name if model.profile else None})

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.sessions.set(len(active))
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.mount("/static", StaticFiles(directory=static_dir()), name="static")

    async def refuse(ws: WebSocket, code: str, message: str, close_code: int) -> None:
        metrics.refused.labels(code).inc()
        client = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
        log.warning("refused %s: %s (%s)", client, code, message, extra={"client": client, "code": code})
        await ws.accept()
        await ws.send_text(json.dumps({"type": "error", "error": {"code": code, "message": message}}))
        await ws.close(close_code, reason=code)

    @app.websocket(REALTIME_PATH)
    async def realtime(ws: WebSocket) -> None:
        if not token_ok(options.token, ws.headers, ws.query_params):
            await refuse(ws, "unauthorized", "missing or wrong token: pass ?token=... or Authorization: Bearer ...",
                         CLOSE_POLICY)
            return
        if not origin_ok(ws.headers.get("origin"), ws.headers.get("host"), options.allowed_origins):
            await refuse(ws, "origin_not_allowed", f"origin {ws.headers.get('origin')!r} may not connect; serve the "
                         "page from this server or start it with --allow-origin", CLOSE_POLICY)
            return
        if len(active) + pending[0] >= options.max_sessions:
            await refuse(ws, "server_full", f"all {options.max_sessions} sessions are in use; try again later",
                         CLOSE_TRY_AGAIN)
            return
        pending[0] += 1
        try:
            await ws.accept()
        except Exception:
            pending[0] -= 1
            return
        await _serve(ws)

    async def _serve(ws: WebSocket) -> None:
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def emit(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(outbox.put_nowait, event)

        try:
            conn = await asyncio.to_thread(Connection, model, emit, options.limits, metrics.turn,
                                           lambda code: metrics.errors.labels(code).inc())
        finally:
            pending[0] -= 1
        active.add(conn)
        client = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
        log.info("session %d opened from %s (%d active)", conn.id, client, len(active),
                 extra={"session": conn.id, "client": client})
        conn.created()
        sender = asyncio.create_task(_send(ws, outbox))
        poller = asyncio.create_task(_poll(conn))
        try:
            await _receive(ws, conn)
        finally:
            active.discard(conn)
            conn.lane.close()  # queued steps are dropped before anything else happens
            poller.cancel()
            await asyncio.to_thread(conn.close)
            outbox.put_nowait(None)
            await asyncio.gather(sender, return_exceptions=True)
            log.info("session %d closed (%d active)", conn.id, len(active), extra={"session": conn.id})

    async def _receive(ws: WebSocket, conn: Connection) -> None:
        limits = options.limits
        while True:
            try:
                message = await asyncio.wait_for(ws.receive(), timeout=limits.idle_timeout)
            except TimeoutError:
                conn.emit_error("idle_timeout", f"no message for {limits.idle_timeout:g} s; closing the session")
                await asyncio.sleep(0.05)
                await ws.close(1000, reason="idle_timeout")
                return
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            try:
                await asyncio.to_thread(conn.handle, parse_event(raw, limits))
            except ProtocolError as exc:
                conn.emit_error(exc.code, str(exc))

    async def _send(ws: WebSocket, outbox: asyncio.Queue) -> None:
        while (event := await outbox.get()) is not None:
            try:
                await ws.send_text(json.dumps(event, ensure_ascii=False))
            except Exception:  # the client went away; the receiver sees the disconnect and cleans up
                return

    async def _poll(conn: Connection) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            conn.poll()

    return app
