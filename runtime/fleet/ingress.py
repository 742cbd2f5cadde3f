"""The fleet's client-facing app: the kiosk page and the realtime WebSocket of ``bcaudio serve``, relayed.

Clients see exactly ``bcaudio serve``'s protocol and page. Each WebSocket becomes one ``converse`` call on a
model replica, routed by Ray Serve to the replica with the fewest ongoing calls, i.e. the least loaded;
the client's messages follow through the ingress's mailbox, the replica's events come back as the call's
stream. The ingress holds no conversation state, so when a replica dies its clients get an ``error`` event
(``replica_lost``) from here and reconnect at once: Ray Serve routes the new conversation to a live replica.
A full fleet (as many conversations as its largest size holds) refuses with ``server_full`` as a full
``bcaudio serve`` does; below that, a client waits only while Ray Serve starts or restarts a replica.
"""


import asyncio
import json
import logging
import uuid
from typing import Any

import ray
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from ray import serve

from bcaudio.runtime.fleet.mailbox import Mailbox
from bcaudio.runtime.fleet.prometheus import cluster_metrics
from bcaudio.runtime.serve.app import CLOSE_POLICY, CLOSE_TRY_AGAIN, REALTIME_PATH, static_dir
from bcaudio.runtime.serve.security import origin_ok, token_ok

CLOSE_REPLICA_LOST = 1011  # RFC 6455: the server met a condition that kept it from going on
LOG = logging.getLogger("bcaudio.fleet")
app = FastAPI(title="bcaudio fleet", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/static", StaticFiles(directory=static_dir()), name="static")


def error_event(code: str, message: str) -> str:
    return json.dumps({"type": "error", "error": {"code": code, "message": message}})


@serve.ingress(app)
class FleetIngress:
    """The ingress deployment; ``replicas`` is the model deployment's handle.

    This module has no ``from __future__ import annotations``: Ray Serve rebuilds the routes' signatures, and
    FastAPI must see ``WebSocket`` as a class, not a string, to pass the socket in."""

    def __init__(self, replicas: Any, capacity: int, token: str | None, allowed_origins: list[str],
                 idle_timeout: float) -> None:
        self.replicas, self.capacity = replicas, capacity
        self.token, self.allowed_origins, self.idle_timeout = token, allowed_origins, idle_timeout
        self.mailbox = ray.remote(Mailbox).options(num_cpus=0, max_concurrency=10_000).remote()
        self.page = (static_dir() / "index.html").read_text(encoding="utf-8")
        self.active = 0

    @app.get("/", response_class=HTMLResponse)
    async def index(self) -> HTMLResponse:
        return HTMLResponse(self.page, headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        return JSONResponse({"status": "ok", "sessions": self.active, "capacity": self.capacity})

    @app.get("/metrics")
    async def metrics(self) -> PlainTextResponse:
        """Every node's Ray metrics (bcaudio's ``ray_bcaudio_fleet_*`` among them) in one text."""
        return PlainTextResponse(await asyncio.to_thread(cluster_metrics))

    @app.websocket(REALTIME_PATH)
    async def realtime(self, ws: WebSocket) -> None:
        if not token_ok(self.token, ws.headers, ws.query_params):
            await self._refuse(ws, "unauthorized", "missing or wrong token: pass ?token=... or Authorization: "
                               "Bearer ...", CLOSE_POLICY)
            return
        if not origin_ok(ws.headers.get("origin"), ws.headers.get("host"), self.allowed_origins):
            await self._refuse(ws, "origin_not_allowed", f"origin {ws.headers.get('origin')!r} may not connect",
                               CLOSE_POLICY)
            return
        if self.active >= self.capacity:
            await self._refuse(ws, "server_full", f"all {self.capacity} sessions of the fleet are in use; try again "
                               "later", CLOSE_TRY_AGAIN)
            return
        await ws.accept()
        conversation = uuid.uuid4().hex
        stream = self.replicas.options(stream=True).converse.remote(conversation, self.mailbox)
        self.active += 1
        relay = asyncio.create_task(self._relay(ws, conversation))
        try:
            await self._forward(ws, stream, conversation)
        finally:
            self.active -= 1
            relay.cancel()
            stream.cancel()
            self.mailbox.drop.remote(conversation)

    async def _forward(self, ws: WebSocket, stream: Any, conversation: str) -> None:
        """The replica's events to the client until either side ends."""
        replica: dict[str, Any] = {}
        try:
            async for event in stream:
                if event["type"] == "fleet.replica":
                    replica = {"replica": event["replica"], "replica_pid": event["pid"]}
                    continue
                if event["type"] == "session.created":  # replicas number their sessions each from 1
                    event = {**event, "session_id": f"sess_{conversation[:16]}", **replica}
                await ws.send_text(json.dumps(event, ensure_ascii=False))
        except ray.exceptions.RayError as exc:  # the replica died (or was lost with its node)
            LOG.warning("replica %s lost mid-conversation: %s", replica.get("replica"), type(exc).__name__)
            await self._close(ws, "replica_lost", "the replica holding this conversation stopped; reconnect to "
                              "start a new conversation on another replica", CLOSE_REPLICA_LOST)
        except (WebSocketDisconnect, RuntimeError):  # the client went away while we sent
            return

    async def _relay(self, ws: WebSocket, conversation: str) -> None:
        """The client's messages into the mailbox; the client leaving (or idling out) closes the conversation."""
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.receive(), timeout=self.idle_timeout)
                except TimeoutError:
                    await self._close(ws, "idle_timeout", f"no message for {self.idle_timeout:g} s; closing the "
                                      "session", 1000)
                    return
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text")
                self.mailbox.put.remote(conversation, raw if raw is not None else message.get("bytes") or b"")
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            self.mailbox.close.remote(conversation)

    @staticmethod
    async def _close(ws: WebSocket, code: str, message: str, close_code: int) -> None:
        try:
            await ws.send_text(error_event(code, message))
            await ws.close(close_code, reason=code)
        except (WebSocketDisconnect, RuntimeError):
            pass

    async def _refuse(self, ws: WebSocket, code: str, message: str, close_code: int) -> None:
        client = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
        LOG.warning("refused %s: %s (%s)", client, code, message)
        await ws.accept()
        await self._close(ws, code, message, close_code)
