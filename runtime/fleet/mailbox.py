"""Client messages on their way from the ingress to the replica that holds the conversation.

Ray Serve streams a replica's answers back to the caller, but a call cannot take more input once it has
started. A conversation is therefore one long streaming call (``ModelReplica.converse``) that pulls the
client's messages from this actor: one per ingress replica, an asyncio queue per conversation inside it.
Ray runs an async actor's methods concurrently, and tasks from one caller to one actor start in
submission order, so a conversation's messages arrive in the order the client sent them.
"""

from __future__ import annotations

import asyncio

CLOSED = "__bcaudio_closed__"  # the client has gone: the replica ends the conversation


class Mailbox:
    """Queues of raw client messages, one per conversation; an actor (``ray.remote(Mailbox)``)."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[str | bytes]] = {}

    def _queue(self, conversation: str) -> asyncio.Queue[str | bytes]:
        return self._queues.setdefault(conversation, asyncio.Queue())

    async def put(self, conversation: str, message: str | bytes) -> None:
        self._queue(conversation).put_nowait(message)

    async def take(self, conversation: str, timeout: float) -> list[str | bytes]:
        """Every message waiting for ``conversation`` (waiting up to ``timeout`` s for the first), in order;
        the list ends with ``CLOSED`` once the client has gone."""
        queue = self._queue(conversation)
        try:
            first = await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            return []
        out = [first]
        while not queue.empty():
            out.append(queue.get_nowait())
        return out

    async def close(self, conversation: str) -> None:
        self._queue(conversation).put_nowait(CLOSED)

    async def drop(self, conversation: str) -> None:
        """Forget ``conversation`` (its call has ended, or its replica died): nothing will take from it again."""
        self._queues.pop(conversation, None)

    async def size(self) -> int:
        """Conversations with a queue: what a test checks for leaks."""
        return len(self._queues)
