"""One viewer's live stream, without any web code: a `StreamSession` run block by block in its own thread,
each block's frames encoded as images and handed to an `Outbox` that the event loop drains to the viewer.

- The worker never waits for the viewer: frames go into a bounded queue that drops the oldest frame when full
  (and counts it), so a slow or stalled client costs its own frames, never the generation of anyone else.
- Pacing (`fps` > 0) is against the clock, not the client: the worker makes at most one block ahead of the
  frames due at `fps` since its first frame, and the sender sends at most `fps` frames per second (after a stall
  it does not burst to catch up). `fps` = 0: as fast as the model goes.
- A prompt switch bumps a version: queued frames of older versions are flushed, late ones are discarded on
  arrival, and the worker applies the prompt (`StreamSession.set_prompt`, re-caching the KV window) at its next
  block, tagging that block's frames with the new version.
"""
import asyncio
import io
import threading
import time
from collections import deque
from dataclasses import dataclass

from PIL import Image

from causvid.pipelines.stream import StreamSession
from causvid.video_io import to_uint8_frames

__all__ = ["Frame", "Outbox", "LiveStream", "encode_frames", "seconds_to_wait"]


@dataclass
class Frame:
    data: bytes      # the encoded image
    version: int     # the prompt version it was made under (see `Outbox.switch`)
    prompt: str
    last_of_block: bool


def encode_frames(pixels, image_format: str = "png") -> list:
    """Pixel frames [n, 3, H, W] in [-1, 1] -> one encoded image (bytes) each; PNG is lossless, JPEG q=90."""
    out = []
    for array in to_uint8_frames(pixels):
        buffer = io.BytesIO()
        if image_format == "png":
            Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
        else:
            Image.fromarray(array).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def seconds_to_wait(fps: float, made: int, last_block: int, elapsed: float) -> float:
    """How long the worker waits before its next block so that at most one block is made ahead of the frames
    due at `fps` frames/s: wait until the frames due (`elapsed` * fps since the first frame) reach the
    frames made before the last block. 0 when unpaced or late."""
    if fps <= 0:
        return 0.0
    return max(0.0, (made - last_block) / fps - elapsed)


class Outbox:
    """A viewer's queue, used from the event loop only: control events (sent first) and at most `capacity`
    frames (the oldest dropped, counted in `dropped`). Frames older than the current prompt version are flushed
    by `switch` and refused afterwards. Events are bounded too, for a client that sends and never reads: a
    `stats` event replaces a queued one, and past `max_events` the oldest `stats`, else the oldest `error`,
    else the oldest event is dropped (counted in `events_dropped`)."""

    def __init__(self, capacity: int, max_events: int = 16):
        if capacity < 1 or max_events < 1:
            raise ValueError(f"an outbox holds at least one frame and one event, got capacity {capacity}, "
                             f"max_events {max_events}")
        self.capacity, self.max_events, self.frames, self.events = capacity, max_events, deque(), deque()
        self.version, self.dropped, self.flushed, self.events_dropped = 0, 0, 0, 0
        self._ready = asyncio.Event()

    def put_event(self, event: dict) -> None:
        if event["type"] == "stats":  # only the newest counts matter
            self._remove_oldest("stats", count=False)
        self.events.append(event)
        if len(self.events) > self.max_events:
            self._remove_oldest("stats") or self._remove_oldest("error") or self._remove_oldest(None)
        self._ready.set()

    def _remove_oldest(self, kind, count: bool = True) -> bool:
        """Remove the oldest queued event of type `kind` (None: of any type); whether there was one."""
        for i, event in enumerate(self.events):
            if kind is None or event["type"] == kind:
                del self.events[i]
                self.events_dropped += count
                return True
        return False

    def put_frames(self, frames) -> None:
        for frame in frames:
            if frame.version < self.version:
                self.flushed += 1
                continue
            if len(self.frames) == self.capacity:
                self.frames.popleft()
                self.dropped += 1
            self.frames.append(frame)
        self._ready.set()

    def switch(self) -> int:
        """A new prompt version: frames of the old ones not yet sent are flushed. Returns the new version."""
        self.version += 1
        self.flushed += len(self.frames)
        self.frames.clear()
        return self.version

    async def get(self):
        """The next event (dict) if any, else the next frame (`Frame`); waits for one."""
        while not (self.events or self.frames):
            self._ready.clear()
            await self._ready.wait()
        return self.events.popleft() if self.events else self.frames.popleft()


class LiveStream:
    """Generates for one viewer in a daemon thread until `stop()`: blocks of `StreamSession(components, config,
    prompt, seed)` (endless), encoded and delivered to `outbox` through the event `loop`, tagged with prompt
    `version` until `set_prompt` gives another. If generation fails, the thread ends and `on_failure(self,
    message)` runs on the event loop (its last act)."""

    def __init__(self, components, config, prompt: str, seed: int, fps: float, outbox: Outbox, loop,
                 image_format: str = "png", version: int = 0, on_failure=None):
        self.components, self.config, self.seed, self.fps = components, config, seed, fps
        self.outbox, self.loop, self.image_format, self.on_failure = outbox, loop, image_format, on_failure
        self._prompt = (version, prompt)  # (version, prompt): written by the event loop, read by the worker
        self._stop = threading.Event()
        self._wake = threading.Event()  # ends a pacing wait early: a switch (its block ahead was flushed), a stop
        self.thread = threading.Thread(target=self._run, name=f"live-stream-{seed}", daemon=True)

    def start(self) -> "LiveStream":
        self.thread.start()
        return self

    def set_prompt(self, version: int, prompt: str) -> None:
        self._prompt = (version, prompt)
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def join(self) -> None:
        """Stop and wait (without blocking the event loop) until the thread has let go of its session."""
        self.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join)

    def _run(self):
        try:
            self._generate()
        except Exception as err:  # a failing model must end this stream with a message, not kill the server
            if self.on_failure is not None:
                try:
                    self.loop.call_soon_threadsafe(self.on_failure, self, f"{type(err).__name__}: {err}")
                except RuntimeError:  # the loop is closed: nobody is listening any more
                    pass

    def _generate(self):
        version, prompt = self._prompt
        session = StreamSession(self.components, self.config, prompt, seed=self.seed)
        first, made = None, 0  # the pacing clock: time of the first frame, frames made since
        while not self._stop.is_set():
            wanted = self._prompt
            if wanted[0] != version:
                version, prompt = wanted
                session.set_prompt(prompt)
                first, made = None, 0  # the frames made ahead were flushed: the clock restarts with this block
            block = session.next_block()
            if self._stop.is_set():
                break
            encoded = encode_frames(block.pixels[0], self.image_format)
            n = len(encoded)
            frames = [Frame(data, version, prompt, i == n - 1) for i, data in enumerate(encoded)]
            self.loop.call_soon_threadsafe(self.outbox.put_frames, frames)
            now = time.perf_counter()
            first = now if first is None else first
            made += n
            if self.fps > 0 and made / self.fps < now - first:
                first = now - made / self.fps  # late: the clock restarts here, no burst
            self._wake.wait(seconds_to_wait(self.fps, made, n, now - first))
            self._wake.clear()
