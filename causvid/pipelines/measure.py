"""Timing and peak memory of a rollout, for scripts/benchmark_inference.py: seconds per block and to the first
decoded pixels (CUDA synchronised before each reading), the peak memory of a region, and the median and spread
of repeated runs."""
import os
import resource
import statistics
import threading
import time

import torch

from causvid.pipelines.speed import overlapped_decode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sync_current(device: torch.device) -> None:
    """Wait for the caller's stream only (an overlapped rollout keeps running on its own stream)."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a region. CUDA: torch.cuda.max_memory_allocated (exact, allocator view). CPU: the process's
    resident set size sampled every millisecond from /proc/self/statm by a thread (an approximation: it misses
    spikes shorter than the sampling interval and counts allocator caching), or, without /proc, the growth of
    getrusage's ru_maxrss (which only moves when the process-wide high-water mark rises)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = self.base = 0
        self.method = None
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        elif os.path.exists("/proc/self/statm"):
            self.base = self.peak = _rss_bytes()
            self.method = "peak RSS, sampled every 1 ms from /proc/self/statm (approximation)"

            def sample():
                while not self._stop.wait(0.001):
                    self.peak = max(self.peak, _rss_bytes())
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "growth of getrusage ru_maxrss (process high-water mark; approximation)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            _sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
        else:
            self.peak = max(self.base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return False

    def result(self) -> dict:
        return dict(peak_bytes=self.peak, delta_bytes=self.peak - self.base, method=self.method)


def timed_latents(make_blocks, device) -> dict:
    """Seconds per block (each block's denoising steps plus its cache refresh) and the clean latents."""
    _sync(device)
    t0 = last = time.perf_counter()
    times, latents = [], []
    for _, z in make_blocks():
        _sync(device)
        now = time.perf_counter()
        times.append(now - last)
        latents.append(z)
        last = now
    return dict(block_s=times, first_s=times[0], total_s=last - t0, latents=torch.cat(latents, dim=1))


def timed_pixels(make_blocks, vae, overlap: bool, device) -> dict:
    """Rollout + streaming VAE decode: seconds to the first block's pixels and to the last, pixel frames."""
    decoder = vae.stream_decoder()
    _sync(device)
    t0 = time.perf_counter()
    first, pixel_frames, now = None, 0, t0
    for _, _, pixels in overlapped_decode(make_blocks(), decoder, enabled=overlap):
        _sync_current(device)
        now = time.perf_counter()
        first = now - t0 if first is None else first
        pixel_frames += pixels.shape[1]
    _sync(device)
    return dict(first_pixels_s=first, total_s=time.perf_counter() - t0, pixel_frames=pixel_frames)


def stats(values) -> dict:
    values = list(values)
    med = statistics.median(values)
    return dict(median=med, min=min(values), max=max(values),
                spread=(max(values) - min(values)) / med if med else 0.0, runs=values)
