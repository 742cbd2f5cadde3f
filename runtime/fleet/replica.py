"""A model replica of the fleet: one package load, many conversations, each exactly as ``bcaudio serve`` runs it.

A conversation is one streaming call, ``converse``: it yields the protocol's server events while it pulls the
client's messages from the ingress's mailbox. The conversation (its ``Connection``, KV cache and live
session) lives only in this replica's memory, so every message of it must reach this replica: that is why
it is one call, which Ray Serve keeps on the replica it was routed to. Ray Serve counts the call as one
ongoing request for as long as the conversation lasts, so ``max_ongoing_requests`` is the replica's session
limit and autoscaling on ongoing requests is autoscaling on active conversations.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from bcaudio.runtime.fleet.mailbox import CLOSED
from bcaudio.runtime.fleet.metrics import FleetMetrics
from bcaudio.runtime.serve.connection import Connection
from bcaudio.runtime.serve.model import SharedModel
from bcaudio.runtime.serve.protocol import Limits, ProtocolError, parse_event

TAKE_SECONDS = 0.5  # how long one mailbox call waits for the client's next message
POLL_SECONDS = 0.05  # as `bcaudio serve`: notice an answer that finished playing while no audio arrives
LOG = logging.getLogger("bcaudio.fleet")


class ModelReplica:
    """The deployment class (``deploy.py`` wraps it with ``serve.deployment``)."""

    def __init__(self, package: str, device_profile: str | None, limits: dict[str, Any]) -> None:
        from ray import serve

        self.replica = serve.get_replica_context().replica_id.unique_id
        self.model = SharedModel(package, device_profile, log=LOG.info)
        self.limits = Limits(**limits)
        self.metrics = FleetMetrics(self.replica)
        self.conversations = 0

    def _count(self, delta: int) -> None:
        self.conversations += delta
        self.metrics.sessions.set(self.conversations)

    async def converse(self, conversation: str, mailbox: Any) -> AsyncIterator[dict[str, Any]]:
        """The server events of one conversation, first a ``fleet.replica`` event naming this replica (the
        ingress keeps it: a client sees it only as ``session.created``'s ``replica`` field)."""
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def emit(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(outbox.put_nowait, event)

        conn = await asyncio.to_thread(Connection, self.model, emit, self.limits, self.metrics.turn,
                                       self.metrics.error)
        self._count(+1)
        yield {"type": "fleet.replica", "replica": self.replica, "pid": os.getpid()}
        conn.created()
        pump = asyncio.create_task(self._pump(conversation, mailbox, conn, outbox))
        poller = asyncio.create_task(self._poll(conn))
        try:
            while (event := await outbox.get()) is not None:
                yield event
        finally:
            conn.lane.close()  # queued steps are dropped first, as in `bcaudio serve`
            pump.cancel()
            poller.cancel()
            await asyncio.to_thread(conn.close)
            self._count(-1)

    async def _pump(self, conversation: str, mailbox: Any, conn: Connection,
                    outbox: asyncio.Queue[dict[str, Any] | None]) -> None:
        try:
            while True:
                for raw in await mailbox.take.remote(conversation, TAKE_SECONDS):
                    if raw == CLOSED:
                        return
                    try:
                        await asyncio.to_thread(conn.handle, parse_event(raw, self.limits))
                    except ProtocolError as exc:
                        conn.emit_error(exc.code, str(exc))
        finally:
            outbox.put_nowait(None)

    @staticmethod
    async def _poll(conn: Connection) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            conn.poll()

    def stats(self) -> dict[str, Any]:
        """What ``/healthz`` of the ingress shows per replica."""
        return {"replica": self.replica, "pid": os.getpid(), "conversations": self.conversations,
                "profile": self.model.profile.name if self.model.profile else None,
                "queued_steps": self.model.scheduler.waiting, "limits": asdict(self.limits)}
