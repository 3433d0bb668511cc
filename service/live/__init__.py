"""The live stream: committed changes fanned out to every server process's WebSocket clients.

Modules: ``frames`` (what a client receives, cursors), ``relay`` (clients and their buffers,
the Redis subscription), ``publisher`` (commits to frames), ``hub`` (one process's live stream
assembled), ``endpoint`` (the WebSocket). The wire format between processes is in
service/contracts.py; the catch-up is ``GET /api/v1/messages?after=`` (service/api.py).

How it flows::

    flusher commits ─▶ Publisher (one per process, in commit order; the rows the commit returned)
        ─▶ PUBSUB NUMSUB: which of the commit's tenants have a live client anywhere
        ─▶ PUBLISH sense:live:{tenant_id}  (one Redis message per listened tenant per flush)
    worker writes analysis ─▶ contracts.publish_analyzed() ─▶ the same channel
    every process: Relay (one pub/sub connection, SUBSCRIBEd to the tenants it has clients of)
        ─▶ each client's bounded buffer ─▶ its WebSocket

Without SENSE_REDIS_URL the publisher hands its frames to the relay of its own process (fine for
one process; with several, a client only sees what its own process ingested).

``WS /api/v1/stream`` — authenticate with the tenant token, either as ``?token=`` or as the
first message ``{"token": "…"}`` within 5 s (browsers: prefer the message, URLs get logged;
at most 1,000 sockets per process may be waiting for their token, more are closed 1013).
Every frame is one JSON text message with a ``type``:

``{"type": "ready", "tenant": "acme", "cursor": "c812.0"}``
    Sent once, when the subscription is live: every event committed from here on is delivered.
    ``cursor`` is a catch-up position taken at that moment.
``{"type": "message.created", "cursor": "c815.42", "message": {…message resource…}}``
    A message's content was stored (design.md, "The message resource"). ``cursor`` is its
    position: ``GET /api/v1/messages?after=<cursor>`` lists what arrived after it.
``{"type": "message.updated", "message": {…}}``
    Status, edit, delete or reaction changed: the whole resource as it is now.
``{"type": "message.analyzed", "instance": "…", "message_id": "…", "analysis": {…}}``
    The worker wrote the analysis; ``analysis`` is the resource's ``analysis`` object
    (``state``, ``sentiment``, ``emotion``, ``satisfaction``, ``analyzable``, ``error``).
``{"type": "instance.state", "instance": {…}}`` / ``{"type": "instance.qrcode", "instance": {…}}``
    Connection state or pairing QR changed: the instance as ``GET /api/v1/instances`` shows it
    (``qrcode.base64`` is a ``data:image/png`` URL; it is null once the state is ``open``).
``{"type": "resync", "reason": "…"}``
    Events may have been missed (the relay lost Redis for a moment): catch up as on reconnect.
``{"type": "heartbeat"}``
    Every 25 s, so that idle proxies keep the connection.

The client may send ``{"type": "ping"}`` (answered ``{"type": "pong"}``); anything else is
ignored. Close codes: 4401 bad or missing token, 1013 try again later — either the client fell
behind (its buffer of ``BUFFER_FRAMES`` frames / ``BUFFER_BYTES`` bytes filled up) and was
dropped, or the database or Redis is unreachable right now (the reason says which; reconnect
with a growing delay), 1001 the server
is going away (a dropped client whose socket is still backed up may only see the connection
end: the close frame waits behind the data it has not read). Delivery is at most once per
connection: after any reconnect, resume with ``GET /api/v1/messages?after=<cursor>`` from
the smallest cursor among the last few ``message.created`` frames received (or the ``ready``
cursor), and drop duplicates by (instance, message_id) — frames of transactions committed by
different processes in the same instant may arrive slightly out of cursor order.
"""

from service.live.hub import Live, start

__all__ = ["Live", "start"]
