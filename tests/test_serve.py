"""The live server (`python -m causvid.serve`) on the shipped toy student, over real WebSockets: a uvicorn
server in a thread on 127.0.0.1 (port 0) and `websockets`' client. Every wait is on a message or an event and
every loop is bounded by a message count (the recv timeout only turns a hang into a failure).

References are independent of the server: the frames of a `StreamSession` run here (converted to bytes by hand),
the toy world's colours (a red shape before a switch to a blue one, blue after), and hand-derived counts."""
import asyncio
import io
import json
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from causvid.config import load_config
from causvid.pipelines.stream import StreamSession
from causvid.pipelines.text_to_video import load_components
from causvid.pipelines.cli import run as run_cli
from causvid.serve import live as live_module
from causvid.serve.__main__ import main, parser
from causvid.serve.app import ServeOptions, create_app
from causvid.serve.live import Frame, LiveStream, Outbox, seconds_to_wait
from causvid.serve.server import BackgroundServer

ROOT = Path(__file__).resolve().parents[1]
A, B = "a red square moving left", "a blue circle moving up"
SEED = 5
FIRST, BLOCK = 9, 12       # pixel frames of the first block (1 + 4 * 2) and of every later one (4 * 3)
RECV_TIMEOUT = 60          # a hang fails the test instead of blocking the suite; nothing waits on a clock


@pytest.fixture(scope="module")
def toy():
    config = load_config(ROOT / "configs" / "toy" / "cf_dmd_chunkwise.yaml")
    return load_components(ROOT / "checkpoints" / "toy"), config


@pytest.fixture(scope="module")
def reference(toy):
    """The first 4 blocks (45 pixel frames) of prompt A, seed SEED, as uint8 [H, W, 3] arrays."""
    session = StreamSession(*toy, A, seed=SEED)
    pixels = torch.cat([session.next_block().pixels[0] for _ in range(4)])
    as_bytes = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return list(as_bytes)


@contextmanager
def serving(toy, **options):
    app = create_app(*toy, ServeOptions(model_name="toy", **{"fps": 0, **options}))
    with BackgroundServer(app) as url:
        yield app, url.replace("http://", "ws://") + "/stream"


def image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def colour(frame: np.ndarray) -> str:
    """'red' or 'blue': which channel dominates the pixels that are not the toy's grey background (51)."""
    shape = np.abs(frame.astype(int) - 51).sum(-1) > 120
    r, _, b = frame[shape].mean(0)
    return "red" if r > b else "blue"


class Client:
    """A WebSocket client that reads messages in order: frames (decoded) and events (dicts)."""

    def __init__(self, url, **kwargs):
        # No flow control unless a test asks for it (the slow-client tests): a client whose queue is full stops
        # reading, so closing it mid-stream would wait its whole close timeout (10 s) for the server's close frame.
        kwargs.setdefault("max_queue", None)
        self._connection = connect(url, **kwargs)
        self.ws = self._connection.__enter__()
        self.frames, self.events, self.log = [], [], []  # log: ("frame", index) / ("event", dict) in order

    def send(self, message):
        self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    def read(self, frames=0, event=None, max_messages=400):
        """Read until `frames` more frames have arrived, or an event of type `event`; returns that event."""
        goal = len(self.frames) + frames
        for _ in range(max_messages):
            if event is None and len(self.frames) >= goal:
                return None
            message = self.ws.recv(timeout=RECV_TIMEOUT)
            if isinstance(message, bytes):
                self.log.append(("frame", len(self.frames)))
                self.frames.append(image(message))
            else:
                ev = json.loads(message)
                self.events.append(ev)
                self.log.append(("event", ev))
                if ev["type"] == event:
                    return ev
        raise AssertionError(f"no {event or f'{frames} frames'} within {max_messages} messages: {self.events}")

    def of_type(self, kind):
        return [e for e in self.events if e["type"] == kind]

    def close(self):
        self._connection.__exit__(None, None, None)


# -- pure parts -----------------------------------------------------------------------------------------------
def frames(version, names, last=False):
    return [Frame(name.encode(), version, "p", last and i == len(names) - 1) for i, name in enumerate(names)]


def test_outbox_drops_the_oldest_frames_flushes_old_prompts_and_sends_events_first():
    async def scenario():
        box = Outbox(capacity=3)
        box.put_frames(frames(0, ["f0", "f1", "f2", "f3", "f4"]))
        assert box.dropped == 2
        box.put_event({"type": "stats"})
        got = [await box.get() for _ in range(4)]
        assert got[0] == {"type": "stats"} and [f.data for f in got[1:]] == [b"f2", b"f3", b"f4"]
        box.put_frames(frames(0, ["g0", "g1"]))
        assert box.switch() == 1 and box.flushed == 2 and not box.frames
        box.put_frames(frames(0, ["late"]) + frames(1, ["new"]))  # a frame of the old prompt made after the switch
        assert box.flushed == 3 and [f.data for f in box.frames] == [b"new"] and box.dropped == 2
    asyncio.run(scenario())


def test_the_worker_makes_at_most_one_block_ahead_of_the_paced_clock():
    # 16 frames/s. After the first block (9 frames) nothing is due yet: go on at once (one block ahead).
    assert seconds_to_wait(16, made=9, last_block=9, elapsed=0.0) == 0.0
    # After the second (21 made), wait until the first block's 9 frames are due: 9/16 s after the first frame.
    assert seconds_to_wait(16, made=21, last_block=12, elapsed=0.1) == pytest.approx(9 / 16 - 0.1)
    assert seconds_to_wait(16, made=21, last_block=12, elapsed=1.0) == 0.0  # late: no wait
    assert seconds_to_wait(0, made=21, last_block=12, elapsed=0.0) == 0.0   # unpaced


def test_a_paced_stream_stays_one_block_ahead_until_a_switch_wakes_it(toy):
    """At 0.001 frames/s the worker makes two blocks (one ahead of the first) and then waits ~2.5 hours; a switch
    wakes it at once. Unpaced, a third block under the first prompt would be in progress when the switch came."""
    async def scenario():
        puts = asyncio.Queue()

        class Recording(Outbox):
            def put_frames(self, frames):
                super().put_frames(frames)
                puts.put_nowait(frames)

        box = Recording(capacity=64)
        live = LiveStream(*toy, A, SEED, fps=0.001, outbox=box, loop=asyncio.get_running_loop()).start()
        first, second = [await asyncio.wait_for(puts.get(), RECV_TIMEOUT) for _ in range(2)]
        live.set_prompt(box.switch(), B)
        third = await asyncio.wait_for(puts.get(), RECV_TIMEOUT)
        await live.join()
        return first, second, third

    first, second, third = asyncio.run(scenario())
    assert [len(first), len(second)] == [FIRST, BLOCK] and {(f.version, f.prompt) for f in first + second} == {(0, A)}
    assert len(third) == BLOCK and {(f.version, f.prompt) for f in third} == {(1, B)}


# -- over WebSockets --------------------------------------------------------------------------------------------
def test_frames_come_in_order_complete_and_with_the_events(toy, reference):
    with serving(toy) as (app, url):
        c = Client(url)
        c.send({"type": "start", "prompt": A, "seed": SEED})
        c.read(event="stats")
        c.read(event="stats")
        assert len(c.frames) == FIRST + BLOCK
        assert c.events[0] == {"type": "started", "fps": 0, "video_fps": 16.0, "width": 32, "height": 32,
                               "prompt": A, "seed": SEED}
        assert c.log[0][0] == "event"  # started comes before any frame
        for got, expected in zip(c.frames, reference):
            np.testing.assert_array_equal(got, expected)
        # a stats event right after each block: 9, then 21 frames sent
        stats = c.of_type("stats")
        assert [s["frames"] for s in stats] == [FIRST, FIRST + BLOCK]
        assert c.log.index(("event", stats[0])) == 1 + FIRST  # after started and the block's 9 frames
        assert all(s["dropped"] == 0 and s["prompt"] == A and s["fps"] > 0 for s in stats)
        assert stats[0]["first_frame_s"] > 0 and stats[0]["first_frame_s"] == stats[1]["first_frame_s"]

        c.send({"type": "stop"})
        final = c.read(event="stats")
        assert c.read(event="stopped") == {"type": "stopped"} and c.log[-2:] == [("event", final),
                                                                                 ("event", {"type": "stopped"})]
        c.send({"type": "stop"})  # nothing is on now: an error, and no frame may come before it
        seen = len(c.frames)
        assert c.read(event="error")["message"] == "no stream is on"
        assert len(c.frames) == seen and final["frames"] == seen
        # the same connection starts again
        c.send({"type": "start", "prompt": A, "seed": SEED})
        c.read(frames=FIRST)
        for got, expected in zip(c.frames[seen:], reference):
            np.testing.assert_array_equal(got, expected)
        c.close()


BAD_MESSAGES = [
    ("{not json", "malformed JSON"),
    ('"start"', "unknown message type None"),
    ({"type": "dance"}, "unknown message type 'dance'"),
    ({"prompt": A}, "unknown message type None"),
    ({"type": "start", "prompt": B}, "a stream is already on"),
    ({"type": "prompt", "prompt": ""}, '"prompt" must be a non-empty string'),
    ({"type": "prompt", "prompt": "   "}, '"prompt" must be a non-empty string'),
    ({"type": "prompt"}, '"prompt" must be a non-empty string'),
    ({"type": "prompt", "prompt": 7}, '"prompt" must be a non-empty string'),
    ({"type": "prompt", "prompt": "a red square moving left and then turning around"},
     "the prompt has 9 words; this model reads at most 8"),
    ({"type": "prompt", "prompt": "a" * 1001}, "the prompt has 1001 characters; this server takes at most 1000"),
    ({"type": "x" * 3000}, "unknown message type 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..."),
    (b"\x89PNG", "binary messages are not part of the protocol"),
    ("x" * 5000, "a message of 5000 bytes; this server reads at most 4096"),
]


def test_the_framewise_long_video_student_streams_frame_by_frame_and_switches():
    """checkpoints/toy_long served with its config (framewise: a first block of 1 pixel frame, then 4 a block; a
    switch re-caches only the latest frame, model_kwargs.recache_frames 1): its frames before the switch are a
    StreamSession's, the switch lands on a block boundary, and B's colour and shape show (the analyser's verdict
    on a block's 4 frames) within 8 latent frames of it, never before."""
    from causvid.toy import analyser

    config = load_config(ROOT / "configs" / "toy" / "cf_dmd_framewise.yaml")
    long_student = load_components(ROOT / "checkpoints" / "toy_long"), config
    assert config.model_kwargs.recache_frames == 1
    with serving(long_student) as (app, url):
        c = Client(url)
        c.send({"type": "start", "prompt": A, "seed": SEED})
        c.read(frames=5)
        c.send({"type": "prompt", "prompt": B})
        switch = c.read(event="prompt_applied")["frame"]
        c.read(frames=switch + 32 - len(c.frames))
        c.close()
    assert (switch - 1) % 4 == 0, switch  # 1 pixel frame, then 4 a block
    session = StreamSession(*long_student, A, seed=SEED)
    pixels = torch.cat([session.next_block().pixels[0] for _ in range(1 + (switch - 1) // 4)])
    expected = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for got, want in zip(c.frames[:switch], expected):
        np.testing.assert_array_equal(got, want)
    seen = [(m["colour"], m["shape"]) for m in analyser.measure_batch([np.stack(c.frames[lo:lo + 4])
                                                                      for lo in range(1, switch + 32, 4)])]
    blocks_before = (switch - 1) // 4
    assert ("blue", "circle") not in seen[:blocks_before] and ("blue", "circle") in seen[blocks_before:], seen


def test_every_bad_message_gets_an_error_and_the_stream_goes_on(toy):
    with serving(toy) as (app, url):
        c = Client(url)
        for message, expected in [({"type": "prompt", "prompt": B}, 'no stream is on: send "start" first'),
                                  ({"type": "stop"}, "no stream is on"),
                                  ({"type": "start", "prompt": A, "seed": "five"}, '"seed" must be an integer')]:
            c.send(message)
            assert c.read(event="error")["message"].startswith(expected)
        assert not c.frames and not c.of_type("started")
        c.send({"type": "start", "prompt": A, "seed": SEED})
        c.read(frames=1)
        for message, expected in BAD_MESSAGES:
            c.send(message)
            error = c.read(event="error")["message"]
            assert error.startswith(expected) and len(error) < 150, message  # no long echo of what was sent
        seen = len(c.frames)
        c.read(frames=2 * BLOCK)  # the stream went on, under the first prompt
        assert not c.of_type("prompt_applied") and len(c.of_type("started")) == 1
        assert all(s["prompt"] == A for s in c.of_type("stats")) and len(c.frames) >= seen + 2 * BLOCK
        c.close()


def test_a_prompt_switch_is_announced_and_the_frames_after_it_follow_the_new_prompt(toy):
    with serving(toy) as (app, url):
        c = Client(url)
        c.send({"type": "start", "prompt": A, "seed": SEED})
        c.read(frames=FIRST)
        c.send({"type": "prompt", "prompt": B})
        applied = c.read(event="prompt_applied")
        switch = applied["frame"]
        assert applied["prompt"] == B and switch == len(c.frames)  # the index of the next frame
        c.read(frames=2 * BLOCK)
        assert {colour(f) for f in c.frames[:switch]} == {"red"}
        assert {colour(f) for f in c.frames[switch + BLOCK:switch + 2 * BLOCK]} == {"blue"}
        assert c.of_type("stats")[-1]["prompt"] == B
        c.close()


def test_two_concurrent_sessions_each_get_their_own_stream(toy, reference):
    with serving(toy, max_sessions=2) as (app, url):
        one, two = Client(url), Client(url)
        one.send({"type": "start", "prompt": A, "seed": SEED})
        two.send({"type": "start", "prompt": B, "seed": SEED})
        for _ in range(2):  # read both in turns
            one.read(frames=FIRST)
            two.read(frames=FIRST)
        for got, expected in zip(one.frames, reference):
            np.testing.assert_array_equal(got, expected)
        assert {colour(f) for f in one.frames} == {"red"} and {colour(f) for f in two.frames} == {"blue"}
        one.close()
        two.close()


def test_more_than_max_sessions_get_an_error_and_a_close(toy):
    with serving(toy, max_sessions=1) as (app, url):
        first = Client(url)
        first.send({"type": "start", "prompt": A, "seed": SEED})
        first.read(event="started")  # the first session holds the slot from here on
        extra = Client(url)
        error = extra.read(event="error")
        assert "limit of 1 session" in error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            extra.ws.recv(timeout=RECV_TIMEOUT)
        assert closed.value.rcvd.code == 1013
        first.read(frames=FIRST + BLOCK)  # the first session is unaffected
        first.close()


def live_threads():
    return [t for t in threading.enumerate() if t.name.startswith("live-stream")]


def test_disconnect_mid_stream_frees_the_session(toy):
    with serving(toy, max_sessions=1) as (app, url):
        first = Client(url)
        first.send({"type": "start", "prompt": A, "seed": SEED})
        first.read(frames=3)
        first.close()  # mid-block, with frames queued
        assert app.state.sessions.idle.wait(RECV_TIMEOUT)  # set once the session's thread has ended
        assert not live_threads()
        second = Client(url)
        second.send({"type": "start", "prompt": B, "seed": SEED})
        second.read(frames=FIRST)
        assert not second.of_type("error")
        second.close()


def test_a_client_that_never_reads_does_not_hold_up_the_other(toy, reference):
    with serving(toy, max_sessions=2) as (app, url):
        # its reader stops after one message, so it cannot even read the server's close: do not wait for it
        stalled = Client(url, max_queue=1, close_timeout=0)
        stalled.send({"type": "start", "prompt": B, "seed": SEED})
        reader = Client(url)
        reader.send({"type": "start", "prompt": A, "seed": SEED})
        reader.read(frames=FIRST + 3 * BLOCK)  # four blocks while the other client reads nothing
        for got, expected in zip(reader.frames, reference):
            np.testing.assert_array_equal(got, expected)
        assert app.state.sessions.open == 2  # the stalled session is still on
        stalled.close()
        reader.close()


def test_a_send_that_blocks_drops_the_oldest_frames_and_stats_say_so(toy, reference, monkeypatch):
    """The app driven through ASGI directly, with a `send` that blocks on frames until the test opens it."""
    app = create_app(*toy, ServeOptions(model_name="toy", fps=0, queue_frames=BLOCK))  # the least it takes
    puts, seen = [], {}
    put_frames = Outbox.put_frames

    async def scenario():
        incoming, sent = asyncio.Queue(), []
        gate, blocked, three_blocks, done = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()

        def counting_put(box, frames):
            put_frames(box, frames)
            puts.append(len(frames))
            if len(puts) == 3:
                seen["blocked"], seen["made"], seen["dropped"] = blocked.is_set(), sum(puts), box.dropped
                three_blocks.set()

        monkeypatch.setattr(Outbox, "put_frames", counting_put)

        async def send(message):
            if message.get("bytes") is not None and not gate.is_set():
                blocked.set()
                await gate.wait()
                seen["made_at_release"] = sum(puts)
            sent.append(message)
            if message.get("text") and json.loads(message["text"])["type"] == "error":
                done.set()

        scope = {"type": "websocket", "path": "/stream", "raw_path": b"/stream", "root_path": "", "scheme": "ws",
                 "query_string": b"", "headers": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
                 "subprotocols": [], "asgi": {"version": "3.0"}}
        for text in [None, {"type": "start", "prompt": A, "seed": SEED}]:
            await incoming.put({"type": "websocket.connect"} if text is None else
                               {"type": "websocket.receive", "text": json.dumps(text)})
        task = asyncio.create_task(app(scope, incoming.get, send))
        await three_blocks.wait()
        gate.set()
        for text in [{"type": "stop"}, {"type": "stop"}]:  # the second answers "no stream is on": the end
            await incoming.put({"type": "websocket.receive", "text": json.dumps(text)})
        await done.wait()
        await incoming.put({"type": "websocket.disconnect", "code": 1000})
        await task
        return sent

    sent = asyncio.run(scenario())
    # two more blocks were made while the first frame's send was blocked; of those 33 frames one was being
    # sent and the queue kept the newest 12: 20 dropped
    assert seen["blocked"] and seen["made"] == FIRST + 2 * BLOCK and seen["dropped"] == seen["made"] - 1 - BLOCK
    frames_sent = [image(m["bytes"]) for m in sent if m.get("bytes") is not None]
    np.testing.assert_array_equal(frames_sent[0], reference[0])
    newest = seen["made_at_release"]  # after the blocked send: the 12 newest frames made by then, in order
    assert newest <= len(reference) and len(frames_sent) >= 1 + BLOCK
    for got, expected in zip(frames_sent[1:1 + BLOCK], reference[newest - BLOCK:newest]):
        np.testing.assert_array_equal(got, expected)
    events = [json.loads(m["text"]) for m in sent if m.get("text")]
    final = [e for e in events if e["type"] == "stats"][-1]
    assert final["dropped"] >= seen["dropped"] and final["frames"] == len(frames_sent)


@pytest.mark.long(10)
def test_a_slow_client_over_a_real_socket_loses_the_oldest_frames_and_is_told(toy, reference, monkeypatch):
    """Through uvicorn on a real TCP port: a client reads one frame, then nothing until the server has dropped
    frames for it; its queue never held more than its bound, a stats event counts the dropped frames, and the
    stream goes on when the client reads again."""
    dropping, peak = threading.Event(), []
    put_frames = Outbox.put_frames

    def watching_put(box, frames):
        put_frames(box, frames)
        peak.append(len(box.frames))
        if box.dropped:
            dropping.set()

    monkeypatch.setattr(Outbox, "put_frames", watching_put)
    app = create_app(*toy, ServeOptions(model_name="toy", fps=0, queue_frames=BLOCK))
    server = BackgroundServer(app)
    # small kernel buffers on both ends (accepted sockets inherit the listener's), so that the server's sends
    # block after a few frames rather than a few megabytes, as they would for a slow client far away
    server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with server as http_url:
        url = http_url.replace("http://", "ws://") + "/stream"
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small TCP window
        sock.connect(server.sock.getsockname()[:2])
        c = Client(url, sock=sock, max_queue=1, ping_interval=None)
        c.send({"type": "start", "prompt": A, "seed": SEED})
        c.read(frames=1)
        assert dropping.wait(RECV_TIMEOUT)  # the server went on generating; the oldest queued frames went
        stats = c.read(event="stats", max_messages=2000)
        while not stats["dropped"]:
            stats = c.read(event="stats", max_messages=2000)
        assert stats["frames"] == len(c.frames) and stats["prompt"] == A and max(peak) == BLOCK
        np.testing.assert_array_equal(c.frames[0], reference[0])
        c.read(frames=2 * BLOCK)  # reading again, the stream goes on
        assert app.state.sessions.open == 1 and not c.of_type("error")
        # stopped and read to the end before closing: a client whose one-message queue is full reads nothing
        # more, so it would see the server's close frame only after its close timeout (10 s)
        c.send({"type": "stop"})
        c.read(event="stopped", max_messages=2000)
        c.close()


def test_a_failed_generation_returns_the_connection_to_idle(toy, monkeypatch, caplog):
    """The session's second block raises: the client gets an error, then stopped; the connection is idle (a
    prompt is refused as with no stream) and the next start streams."""
    calls = []

    class Failing(StreamSession):
        def next_block(self):
            calls.append(self)
            if len(calls) == 2:
                raise RuntimeError("injected failure")
            return super().next_block()

    monkeypatch.setattr(live_module, "StreamSession", Failing)
    with serving(toy) as (app, url):
        c = Client(url)
        c.send({"type": "start", "prompt": A, "seed": SEED})
        error = c.read(event="error")
        assert error["message"] == "generation failed: RuntimeError: injected failure"
        assert c.read(event="stopped") == {"type": "stopped"} and c.log[-1] == ("event", {"type": "stopped"})
        c.send({"type": "prompt", "prompt": B})
        assert c.read(event="error")["message"].startswith("no stream is on")
        seen = len(c.frames)
        c.send({"type": "start", "prompt": A, "seed": SEED})
        c.read(event="started")
        c.read(frames=FIRST + BLOCK)
        assert {colour(f) for f in c.frames[seen:]} == {"red"} and len(c.of_type("error")) == 2
        c.close()
    assert "injected failure" in caplog.text


def ws_origin(url):
    return url.replace("ws://", "http://").rsplit("/", 1)[0]


def test_only_the_page_s_own_origin_or_a_client_without_one_opens_the_stream(toy, caplog):
    with serving(toy) as (app, url):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin="http://evil.example:8000")
        assert refused.value.response.status_code == 403
        assert "refused a WebSocket from Origin 'http://evil.example:8000'" in caplog.text
        for origin in [ws_origin(url), None]:  # the page's own, and a client that sends none
            c = Client(url, origin=origin)
            c.send({"type": "start", "prompt": A, "seed": SEED})
            c.read(frames=1)
            c.close()
    with serving(toy, allow_origins=("http://evil.example:8000",)) as (app, url):
        c = Client(url, origin="http://evil.example:8000")
        c.send({"type": "stop"})
        assert c.read(event="error")["message"] == "no stream is on"
        c.close()
        with pytest.raises(InvalidStatus):
            connect(url, origin="http://other.example:8000")


def test_a_client_that_floods_bad_messages_and_never_reads_has_a_bounded_queue(toy, monkeypatch):
    """Driven through ASGI with a `send` that blocks until the test opens it: 300 bad messages while nothing is
    sent; the connection's event queue never holds more than max_events, and the newest are the ones sent."""
    app = create_app(*toy, ServeOptions(model_name="toy", fps=0, max_events=8))
    lengths, errors = [], []
    put_event = Outbox.put_event
    flood = 300

    async def scenario():
        incoming, sent, gate, flooded, drained = asyncio.Queue(), [], asyncio.Event(), asyncio.Event(), asyncio.Event()

        def recording_put(box, event):
            put_event(box, event)
            lengths.append(len(box.events))
            if event["type"] == "error":
                errors.append(event)
                if len(errors) == flood:
                    flooded.set()

        monkeypatch.setattr(Outbox, "put_event", recording_put)

        async def send(message):
            if message["type"] != "websocket.accept":
                await gate.wait()
                sent.append(message)
                if len(sent) == 8:
                    drained.set()

        scope = {"type": "websocket", "path": "/stream", "raw_path": b"/stream", "root_path": "", "scheme": "ws",
                 "query_string": b"", "headers": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
                 "subprotocols": [], "asgi": {"version": "3.0"}}
        await incoming.put({"type": "websocket.connect"})
        for i in range(flood):
            await incoming.put({"type": "websocket.receive", "text": json.dumps({"type": f"bad {i}"})})
        task = asyncio.create_task(app(scope, incoming.get, send))
        await asyncio.wait_for(flooded.wait(), RECV_TIMEOUT)
        gate.set()
        await asyncio.wait_for(drained.wait(), RECV_TIMEOUT)
        await incoming.put({"type": "websocket.disconnect", "code": 1000})
        await task
        return [json.loads(m["text"])["message"] for m in sent]

    sent = asyncio.run(scenario())
    assert len(errors) == flood and max(lengths) == 8
    # the receive loop read the whole flood before the send loop ran: the queue kept the newest 8, in order
    assert sent == [f"unknown message type 'bad {i}': use start, prompt or stop" for i in range(flood - 8, flood)]


# -- the command line -------------------------------------------------------------------------------------------
def test_the_cli_needs_no_argument_binds_loopback_and_says_so(capsys):
    served = []

    def serve(app, sock):
        served.append((app.state.options, sock.getsockname()))
        sock.close()

    assert main(["--port", "0"], serve=serve) == 0
    options, (host, port) = served[0]
    assert host == "127.0.0.1" and port > 0
    assert (options.fps, options.video_fps, options.max_sessions) == (16, 16, 2)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"serving cf_dmd_framewise (checkpoints/toy_long) at http://127.0.0.1:{port} (loopback only; "
                     "1 CPU thread; Ctrl-C stops)", "stopped; served 0 session(s), wrote nothing"]


@pytest.mark.parametrize("argv, message", [
    (["--max_sessions", "0"], "error: --max_sessions 0: must be at least 1"),
    (["--fps", "-1"], "error: --fps -1.0: must be >= 0 (0: unpaced)"),
    (["--config_path", "missing.yaml"], "error: --config_path missing.yaml: no such file or folder"),
    (["--threads", "0"], "error: --threads 0: must be at least 1"),
    (["--allow_origin", "evil.example"], "error: --allow_origin evil.example: give scheme://host[:port] as a "
                                         "browser sends it (e.g. http://localhost:3000), or '*' for any page"),
    (["--max_message_bytes", "10"], "error: --max_message_bytes 10: must be at least 256"),
    (["--sink_size", "6"], "error: --sink_size 6: a window of 6 latent frames must hold the sink and a block of 1; "
                           "give a smaller sink or a larger --local_attn_size"),
])
def test_bad_flags_give_one_line(argv, message, capsys):
    assert run_cli(main, argv) == 2
    assert capsys.readouterr().err.splitlines() == [message]


@pytest.mark.parametrize("argv, window", [
    ([], (6, 0, "absolute")),  # the shipped toy student's default: no sink
    (["--sink_size", "1", "--rope_positions", "window"], (6, 1, "window")),
    (["--local_attn_size", "9"], (9, 0, "absolute")),
    (["--config_path", "configs/toy/cf_dmd_chunkwise.yaml", "--wan_model_path", "checkpoints/toy"],
     (-1, 0, "absolute")),  # another config's own: the session's endless default (training length, one block)
    (["--config_path", "configs/toy/cf_dmd_chunkwise.yaml", "--wan_model_path", "checkpoints/toy",
      "--local_attn_size", "9"], (9, 3, "absolute")),
])
def test_the_kv_window_flags_set_the_config_every_stream_reads(argv, window, monkeypatch):
    """--local_attn_size / --sink_size / --rope_positions reach the config the app's sessions are built from
    (the framewise toy student: 6 latent frames, blocks of 1, no sink unless told; the chunkwise one: blocks of 3);
    a flag left out keeps the config's, then the session's default."""
    import causvid.serve.app as app_module

    built = []
    create_app = app_module.create_app
    monkeypatch.setattr(app_module, "create_app", lambda c, config, o: built.append(config) or create_app(c, config, o))
    assert main(["--port", "0", *[str(ROOT / a) if a.startswith(("configs", "checkpoints")) else a for a in argv]],
                serve=lambda app, sock: sock.close()) == 0
    kwargs = built[0].model_kwargs
    assert (kwargs.local_attn_size, kwargs.sink_size, kwargs.rope_positions) == window


def test_help_names_the_program_and_every_flag_s_help_and_default(capsys):
    with pytest.raises(SystemExit) as done:
        parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and text.startswith("usage: python -m causvid.serve ")
    assert "--allow_origin ORIGIN" in text and "a CPU is enough." in text  # the description is whole
    for action in parser()._actions:
        if action.dest != "help":
            assert action.help and ("default" in action.help or action.dest == "debug"), action.dest


STARTUP = """
import contextlib, io, socket, sys
from causvid.serve.__main__ import cli
busy = socket.create_server(("127.0.0.1", 0))
for argv in (["--help"], ["--threads", "0"], ["--port", str(busy.getsockname()[1])]):
    sys.argv = ["causvid-serve"] + argv
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli()
        except SystemExit as exit:
            code = exit.code
    print(code, err.getvalue().strip())
print("torch loaded" if "torch" in sys.modules else "torch not loaded")
"""


def test_help_a_bad_flag_and_a_busy_port_are_answered_before_torch_loads():
    out = subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True, check=True,
                         timeout=RECV_TIMEOUT).stdout.splitlines()
    assert out[:2] == ["0 ", "2 error: --threads 0: must be at least 1"]
    assert out[2].startswith("2 error: --host 127.0.0.1 --port ") and "cannot listen there" in out[2]
    assert out[3] == "torch not loaded"
