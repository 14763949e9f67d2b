"""scripts/benchmark_inference.py runs in-process on a tiny chunkwise config and writes the figures it promises.
No timing is asserted: only that each figure is there, and that the three rollouts compute the same video."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/tiny/causal_forcing_dmd_chunkwise.yaml")


@pytest.fixture(autouse=True)
def _restore_threads():
    # the tests pass --threads 1 (robust timing on a shared 2-core machine): main() sets it process-wide
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_inference", REPO / "scripts/benchmark_inference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_main_writes_json(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.main(["--config", CONFIG, "--preset", "tiny", "--frames", "6", "--repeats", "2", "--warmup", "1",
                          "--modes", "cached,nocache,skyreels", "--vae", "tiny", "--device", "cpu",
                          "--peak_tflops", "1.0", "--threads", "1", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(results))  # --json holds what main returned
    assert data["settings"]["num_frame_per_block"] == 3 and data["settings"]["frames"] == 6
    assert data["settings"]["steps"] == pytest.approx([1000, 937.5, 833.33, 625], abs=0.1)
    assert set(data["modes"]) == {"cached", "nocache", "skyreels"}
    # the FLOPs of each call by hand: 2 blocks of 3 frames, 4 steps; the cached rollout adds one cache refresh per
    # block and attends to the frames so far, computing the text once; the others recompute the prefix each step
    from causvid.models.wan import get_preset
    tiny = get_preset("tiny")
    tokens = (4 // tiny.patch_size[1]) * (4 // tiny.patch_size[2])
    calls = {"cached": [(3, 3, i == 0) for i in range(5)] + [(3, 6, False)] * 5,
             "nocache": [(3, 3, True)] * 4 + [(6, 6, True)] * 4}
    calls["skyreels"] = calls["nocache"]
    for name, m in data["modes"].items():
        assert m["blocks"] == 2 and m["latent_frames"] == 6 and m["pixel_frames"] == 1 + 4 * 5
        runs = m["total_s"]["runs"]
        assert len(runs) == 2 and m["total_s"]["median"] == pytest.approx(sorted(runs)[0] / 2 + sorted(runs)[1] / 2)
        assert m["first_block_s"]["median"] <= m["total_s"]["median"] and len(m["per_block_s"]) == 2
        assert m["last_block_s"] == m["per_block_s"][-1]
        assert m["fps"] == pytest.approx(21 / m["total_s"]["median"])
        assert m["latent_fps"] == pytest.approx(6 / m["total_s"]["median"])
        assert m["peak_memory"]["peak_bytes"] > 0 and m["peak_memory"]["method"]
        flops = m["flops"]
        by_hand = sum(bench.forward_flops(tiny, q, k, tokens, text)["total"] for q, k, text in calls[name])
        assert flops["calls"] == len(calls[name]) and flops["tflop_per_video"] == pytest.approx(by_hand / 1e12)
        assert flops["achieved_tflops"] == pytest.approx(flops["tflop_per_video"] / m["total_s"]["median"])
        assert flops["mfu"] == pytest.approx(flops["achieved_tflops"] / 1.0)  # --peak_tflops 1.0
        assert ("with_vae" in m) == (name == "cached")
    vae = data["modes"]["cached"]["with_vae"]
    assert vae["fps"] > 0 and vae["first_block_pixels_s"]["median"] > 0 and vae["pixel_frames"] == 21
    # the cache does fewer FLOPs than recomputing the prefix
    assert data["modes"]["cached"]["flops"]["tflop_per_video"] < data["modes"]["nocache"]["flops"]["tflop_per_video"]
    assert set(data["ratios"]) >= {"nocache_over_cached_total", "skyreels_over_cached_total"}
    # same noise, same weights: KV cache, prefix recompute and diffusers' SkyReels-V2 give the same latents
    assert data["checks"]["nocache_vs_cached_max_abs_diff"] < 1e-4
    assert data["checks"]["skyreels_vs_cached_max_abs_diff"] < 1e-4
    assert data["vae_decode_s"]["median"] > 0
    printed = capsys.readouterr().out
    assert "nocache/cached" in printed and "MFU" in printed


def test_framewise_window_and_skyreels_skip(bench, tmp_path):
    results = bench.main(["--config", CONFIG, "--preset", "tiny", "--num_frame_per_block", "1", "--frames", "4",
                          "--height", "8", "--width", "8", "--local_attn_size", "2", "--sink_size", "1",
                          "--repeats", "1", "--warmup", "0", "--modes", "cached,chunkwise,skyreels", "--vae", "none",
                          "--no_cross_cache", "--overlap_decode", "--threads", "1"])
    assert set(results["modes"]) == {"cached"}
    assert "builds no mask" in results["skipped"]["skyreels"]
    assert "do not split" in results["skipped"]["chunkwise"]
    cached = results["modes"]["cached"]
    assert cached["blocks"] == 4 and "with_vae" not in cached and cached["flops"]["mfu"] is None
    # rolling window of 2 frames: keys 1, 2, 2, 2 frames; no cross cache: the text is embedded on every call
    calls = bench.rollout_calls("cached", bench.resolve_settings(bench.parse_args(
        ["--config", CONFIG, "--num_frame_per_block", "1", "--frames", "4", "--local_attn_size", "2",
         "--sink_size", "1"])), 1, 4, cross_cache=False)
    assert [k for _, k, _ in calls] == [1] * 5 + [2] * 15 and all(text for _, _, text in calls)


def test_old_bench_rollout_usage(bench, capsys):
    """The flags and table of the former scripts/bench_rollout.py (here with the cache refresh at t = 50, which
    the SkyReels-V2 driver reproduces by labelling the clean context frames t = 50)."""
    results = bench.main(["--preset", "tiny", "--num_frame_per_block", "3", "--blocks", "2", "--height", "8",
                          "--width", "8", "--steps", "1000", "500", "--context_noise", "50", "--repeats", "1",
                          "--modes", "cached,nocache,skyreels", "--vae", "none", "--threads", "1"])
    printed = capsys.readouterr().out
    assert "block    cached ms   nocache ms  skyreels ms  nocache/cached skyreels/cached" in printed
    assert "total" in printed
    assert results["settings"]["context_noise"] == 50
    assert results["checks"]["nocache_vs_cached_max_abs_diff"] < 1e-4
    assert results["checks"]["skyreels_vs_cached_max_abs_diff"] < 1e-4


def test_flop_count_matches_reference(bench):
    """By hand: one full-attention forward of Wan2.1-T2V-1.3B on 81 frames at 480x832 (21 latent frames x 1560
    tokens, L = 32760) is about 283 TFLOP: self-attention scores and values 4 L^2 dim layers = 4 x 32760^2 x 1536
    x 30 = 198 TFLOP, and 2 FLOP per weight per token for the ~1.3 B weights of the linear layers, ~85 more."""
    from causvid.models.wan import get_preset

    flops = bench.forward_flops(get_preset("wan2.1-t2v-1.3b"), 21, 21, 1560, text=False)
    assert flops["total"] / 1e12 == pytest.approx(283, rel=0.01)
    assert flops["self_attn"] / 1e12 == pytest.approx(198, rel=0.01)
