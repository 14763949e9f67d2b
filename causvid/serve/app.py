"""The web app: GET `/` (the page), GET `/healthz`, GET `/favicon.ico` (none: 204), WebSocket `/stream` (the protocol of docs/serve.md).

Each WebSocket connection is one session (at most `max_sessions` at a time): a receive task reads the client's
JSON messages, a send task drains the connection's `Outbox` (events first, then frames, paced at `fps`), and
a `LiveStream` thread generates while a stream is on. Bad client messages get an `error` event and change
nothing; the stream goes on. A failed generation ends the stream (`error`, then `stopped`): the connection is
idle and can `start` again. A disconnect (or `stop`) stops the thread and waits for it before the session's
slot is given back, so its KV cache is freed by then.

Safe to leave running: the stream is only opened from the server's own page (or a client without an Origin
header, or an origin in `allow_origins`), and what a connection holds is bounded: messages of at most
`max_message_bytes`, prompts of at most `max_prompt_chars` characters and the model's words, a queue of
`queue_frames` frames and `max_events` events, and events quote at most `ECHO_CHARS` of anything refused.
"""
import asyncio
import json
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, Response

from causvid.serve.live import LiveStream, Outbox

__all__ = ["ServeOptions", "create_app", "PAGE"]

PAGE = Path(__file__).with_name("static") / "index.html"
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455 close code: the server is at capacity
CLOSE_POLICY = 1008           # a close before the handshake is accepted: uvicorn answers it with HTTP 403
FPS_WINDOW_S = 5.0            # stats' fps: frames sent over (about) the last this many seconds
ECHO_CHARS = 40               # at most this much of a refused client value is quoted back
log = logging.getLogger("causvid.serve")


@dataclass
class ServeOptions:
    model_name: str
    fps: float = 16.0              # pace per session (0: unpaced)
    video_fps: float = 16.0        # the video's own frame rate (shown to clients)
    max_sessions: int = 2
    queue_frames: int = 32         # per-client frame queue; the oldest frame is dropped past this
    image_format: str = "auto"     # "png", "jpeg", or "auto": PNG (lossless) up to 128 x 128, JPEG above
    suggestions: list = field(default_factory=list)
    vocabulary: dict = field(default_factory=dict)  # group -> words, when the model knows only these (the toy)
    allow_origins: tuple = ()      # origins besides the page's own that may open the stream ("*": any)
    max_message_bytes: int = 4096  # a larger client message gets an error event and is ignored
    max_prompt_chars: int = 1000
    max_events: int = 16           # per-client event queue (see `Outbox`)


class Sessions:
    """How many sessions are open; `idle` (a threading.Event, so other threads can wait on it) is set whenever
    none is."""

    def __init__(self, limit: int):
        self.limit, self.open, self.served = limit, 0, 0
        self.idle = threading.Event()
        self.idle.set()

    def enter(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        self.served += 1
        self.idle.clear()
        return True

    def leave(self) -> None:
        self.open -= 1
        if self.open == 0:
            self.idle.set()


def create_app(components, config, options: ServeOptions) -> FastAPI:
    app = FastAPI(title="causvid live", docs_url=None, redoc_url=None)
    vae = components.vae
    height = int(config.image_or_video_shape[3]) * int(vae.spatial_factor)
    width = int(config.image_or_video_shape[4]) * int(vae.spatial_factor)
    text_len = int(components.dit.config.text_len)
    block = int(config.num_frame_per_block) * int(vae.temporal_factor)  # pixel frames of a (later) block
    if options.queue_frames < block:
        raise ValueError(f"queue_frames {options.queue_frames}: a client's queue must hold a block "
                         f"({block} frames) or every block would lose frames")
    image_format = options.image_format
    if image_format == "auto":
        image_format = "png" if width * height <= 128 * 128 else "jpeg"
    app.state.sessions = Sessions(options.max_sessions)
    app.state.options = options

    @app.get("/")
    async def page():
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/favicon.ico")
    async def favicon():  # browsers ask for it: no icon, but no 404 either
        return Response(status_code=204)

    @app.get("/healthz")
    async def healthz():
        s = app.state.sessions
        return {"status": "ok", "model": options.model_name, "width": width, "height": height,
                "video_fps": options.video_fps, "fps": options.fps, "max_prompt_words": text_len,
                "max_prompt_chars": options.max_prompt_chars, "max_message_bytes": options.max_message_bytes,
                "sessions": s.open, "max_sessions": s.limit, "suggestions": options.suggestions,
                "vocabulary": options.vocabulary}

    @app.websocket("/stream")
    async def stream(ws: WebSocket):
        origin = ws.headers.get("origin")
        if not origin_allowed(origin, ws.headers.get("host"), options.allow_origins):
            log.warning(f"refused a WebSocket from Origin {clip(origin)!r}: not this server's page "
                        "(--allow_origin accepts it)")
            await ws.close(code=CLOSE_POLICY)
            return
        await ws.accept()
        sessions = app.state.sessions
        if not sessions.enter():
            await ws.send_json({"type": "error", "message": f"the server is at its limit of {sessions.limit} "
                                                            "session(s); try again later"})
            await ws.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        conn = Connection(ws, components, config, options, text_len, image_format,
                          {"fps": options.fps, "video_fps": options.video_fps, "width": width, "height": height})
        try:
            await conn.serve()
        finally:
            sessions.leave()

    return app


def origin_allowed(origin, host, allowed) -> bool:
    """Whether a WebSocket handshake may go on: no Origin (not a browser), the page's own origin (its host:port
    is the Host the browser connected to), or one of `allowed` ("*": any)."""
    if origin is None or "*" in allowed:
        return True
    origin = origin.lower().rstrip("/")
    parts = urlsplit(origin)
    same = parts.scheme in ("http", "https") and host is not None and parts.netloc == host.lower()
    return same or origin in allowed


def clip(text, limit: int = ECHO_CHARS) -> str:
    """At most `limit` characters of a client's value, for a message that quotes it."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def check_prompt(message: dict, text_len: int, max_chars: int) -> str:
    """The message's prompt, or ValueError saying what is wrong with it."""
    prompt = message.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError('"prompt" must be a non-empty string')
    prompt = prompt.strip()
    if len(prompt) > max_chars:
        raise ValueError(f"the prompt has {len(prompt)} characters; this server takes at most {max_chars}")
    words = len(prompt.split())
    if words > text_len:
        raise ValueError(f"the prompt has {words} words; this model reads at most {text_len}")
    return prompt


class Connection:
    """One WebSocket session: receive loop, send loop, and the live stream while one is on."""

    def __init__(self, ws, components, config, options, text_len, image_format, video_info):
        self.ws, self.components, self.config, self.options = ws, components, config, options
        self.text_len, self.image_format, self.video_info = text_len, image_format, video_info
        self.outbox = Outbox(options.queue_frames, options.max_events)
        self.live = None
        self.failed = None            # a stream whose generation failed (its thread is ending)
        self.sent = 0                 # binary frames sent on this connection
        self.sent_version = 0         # prompt version of the last frame sent
        self.sent_prompt = None       # and its prompt
        self.started_at = None        # when the current stream's start message arrived
        self.first_frame_s = None
        self.marks = deque()          # (time, frames sent) at the stream's start and at each block's end

    async def serve(self):
        sender = asyncio.create_task(self.send_loop())
        try:
            await self.receive_loop()
        except WebSocketDisconnect:
            pass
        finally:
            sender.cancel()
            await self.end_stream()

    # -- client -> server ----------------------------------------------------------------------------------
    async def receive_loop(self):
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            size = len(text.encode()) if text is not None else len(message.get("bytes") or b"")
            if size > self.options.max_message_bytes:
                self.error(f"a message of {size} bytes; this server reads at most {self.options.max_message_bytes}")
                continue
            if text is None:
                self.error("binary messages are not part of the protocol: send JSON text")
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                self.error(f"malformed JSON ({err.msg} at character {err.pos})")
                continue
            kind = data.get("type") if isinstance(data, dict) else None
            handler = {"start": self.on_start, "prompt": self.on_prompt, "stop": self.on_stop}.get(kind)
            if handler is None:
                self.error(f"unknown message type {clip(repr(kind))}: use start, prompt or stop")
                continue
            try:
                await handler(data)
            except ValueError as err:
                self.error(str(err))

    async def on_start(self, data):
        if self.live is not None:
            raise ValueError('a stream is already on: send "prompt" to switch or "stop" first')
        prompt = check_prompt(data, self.text_len, self.options.max_prompt_chars)
        await self.end_stream()  # a failed stream's thread has let go of its session before another starts
        seed = data.get("seed")
        if seed is None:
            seed = secrets.randbelow(2**31)
        elif not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise ValueError('"seed" must be an integer in [0, 2^63)')
        self.started_at, self.first_frame_s = time.perf_counter(), None
        self.marks = deque([(self.started_at, self.sent)])
        version = self.outbox.switch()
        self.outbox.put_event({"type": "started", **self.video_info, "prompt": prompt, "seed": seed})
        self.live = LiveStream(self.components, self.config, prompt, seed, self.options.fps, self.outbox,
                               asyncio.get_running_loop(), self.image_format, version=version,
                               on_failure=self.on_failure).start()

    async def on_prompt(self, data):
        if self.live is None:
            raise ValueError('no stream is on: send "start" first')
        prompt = check_prompt(data, self.text_len, self.options.max_prompt_chars)
        self.live.set_prompt(self.outbox.switch(), prompt)

    async def on_stop(self, data):
        if self.live is None:
            raise ValueError("no stream is on")
        await self.end_stream()
        self.outbox.put_event(self.stats())
        self.outbox.put_event({"type": "stopped"})

    def on_failure(self, live, message: str):
        """Run on the event loop when `live`'s generation failed: the stream ends and the connection is idle."""
        if live is not self.live:  # stopped meanwhile
            return
        log.warning(f"a stream's generation failed: {message}")
        self.live, self.failed = None, live
        self.outbox.switch()
        self.error(f"generation failed: {clip(message, 200)}")
        self.outbox.put_event({"type": "stopped"})

    async def end_stream(self):
        live, self.live = self.live, None
        if live is not None:
            self.outbox.switch()  # flush what is queued; late frames of this stream are refused
            await live.join()
        if self.failed is not None:  # its thread was ending: make sure it has let go of its session
            failed, self.failed = self.failed, None
            await failed.join()

    def error(self, message: str):
        self.outbox.put_event({"type": "error", "message": message})

    # -- server -> client ----------------------------------------------------------------------------------
    async def send_loop(self):
        try:
            await self._send_loop()
        except (WebSocketDisconnect, RuntimeError):  # the client is gone; the receive loop ends the session
            pass

    async def _send_loop(self):
        next_due, fps = 0.0, self.options.fps
        while True:
            item = await self.outbox.get()
            if isinstance(item, dict):
                await self.ws.send_json(item)
                continue
            delay = next_due - time.perf_counter()
            if fps > 0 and delay > 0:
                await asyncio.sleep(delay)
            if item.version < self.outbox.version:  # switched or stopped since it was queued
                continue
            if item.version != self.sent_version:
                self.sent_version, self.sent_prompt = item.version, item.prompt
                if self.first_frame_s is not None:  # not the stream's first frame: a switched prompt
                    await self.ws.send_json({"type": "prompt_applied", "prompt": item.prompt, "frame": self.sent})
            await self.ws.send_bytes(item.data)
            now = time.perf_counter()
            next_due = max(next_due, now - 1.0 / fps) + 1.0 / fps if fps > 0 else 0.0
            self.sent += 1
            if self.first_frame_s is None:
                self.first_frame_s = now - self.started_at
            if item.last_of_block:
                await self.ws.send_json(self.stats())
                self.marks.append((time.perf_counter(), self.sent))

    def stats(self) -> dict:
        """Frames sent on this connection, the rate since the oldest block end (or the start) in the last
        FPS_WINDOW_S seconds, the stream's first-frame latency, frames dropped (slow client) and flushed."""
        now, fps = time.perf_counter(), 0.0
        while len(self.marks) > 1 and now - self.marks[1][0] >= FPS_WINDOW_S:
            self.marks.popleft()
        if self.marks and now > self.marks[0][0]:
            fps = (self.sent - self.marks[0][1]) / (now - self.marks[0][0])
        return {"type": "stats", "frames": self.sent, "fps": round(fps, 2),
                "first_frame_s": None if self.first_frame_s is None else round(self.first_frame_s, 4),
                "dropped": self.outbox.dropped, "flushed": self.outbox.flushed,
                "events_dropped": self.outbox.events_dropped, "prompt": self.sent_prompt}
