"""scripts/device_check (python -m scripts.device_check): the smoke run (every part at toy size on the CPU) writes every part's key with its
figures; a failing part records its error and the others still run; the JSON on disk is rewritten after each
part; the budget stops the run cleanly. No timing is asserted."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import scripts.device_check as dc

REPO = Path(__file__).resolve().parents[1]

GPU_ONLY = {"inference.flash_attn", "inference.cuda_graphs"}
NEEDS_GPU_ONLY = {"numerics.flash_attn_vs_eager", "numerics.cuda_graphs_vs_eager"}


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # the tests pass --threads 1; main() sets it process-wide
    yield
    torch.set_num_threads(threads)


@pytest.mark.long(20)
def test_smoke_writes_every_part(tmp_path, capsys):
    out = tmp_path / "check.json"
    # (compile backend "eager": dynamo's tracing of the blocks, the part that breaks, without the slow code-gen)
    results = dc.main(["--smoke", "--threads", "1", "--peak_tflops", "1", "--compile_backend", "eager",
                       "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(results, default=str))
    names = [p.name for p in dc.default_parts()]
    assert list(data["parts"]) == names and data["meta"]["state"] == "finished"
    for name, part in data["parts"].items():
        if name in GPU_ONLY:
            assert part["status"] == "skipped" and "CUDA" in part["reason"], name
        elif name in NEEDS_GPU_ONLY:
            assert part["status"] == "skipped" and "needs the latents of inference." in part["reason"], name
        else:
            assert part["status"] == "ok", (name, part.get("error"), part.get("traceback"))
            assert part["seconds"] >= 0
    p = {name: part.get("result") for name, part in data["parts"].items()}
    for size in ("1.3b", "14b"):  # a checkpointed cached rollout holds more than the critic's full sequence
        roles = p[f"memory.dmd_{size}"]["roles"]
        assert roles["generator"]["held_bytes"] > roles["critic"]["held_bytes"] > 0
    assert p["environment"]["torch"] == torch.__version__ and "flex_attention" in p["environment"]["optional_kernels"]
    for name in ("eager_sdpa", "compile", "overlap_decode", "framewise"):
        r = p[f"inference.{name}"]
        assert r["fps"] > 0 and r["with_vae"]["fps"] > 0 and r["first_block_s"]["median"] > 0
        assert r["with_vae"]["first_block_pixels_s"]["median"] > 0 and r["peak_memory"]["peak_bytes"] > 0
        assert r["flops"]["mfu"] > 0 and r["latent_shape"] == [1, 6, 16, 4, 4]
    # the FLOPs by hand, as tests/test_benchmark_smoke.py counts them: per block 4 steps + 1 refresh, each
    # attending to the frames so far, the text computed once
    spec = importlib.util.spec_from_file_location("benchmark_inference_flops", REPO / "scripts/benchmark_inference.py")
    flop_module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = flop_module
    spec.loader.exec_module(flop_module)
    from causvid.models.wan import get_preset
    for name in ("eager_sdpa", "compile", "overlap_decode", "framewise"):
        r = p[f"inference.{name}"]
        cfg, block = get_preset(r["preset"]), r["num_frame_per_block"]
        tokens = (4 // cfg.patch_size[1]) * (4 // cfg.patch_size[2])
        calls = [(block, block * (b + 1), b == 0 and i == 0) for b in range(6 // block) for i in range(5)]
        by_hand = sum(flop_module.forward_flops(cfg, q, k, tokens, text)["total"] for q, k, text in calls)
        assert r["flops"]["calls"] == len(calls) and r["flops"]["tflop_per_video"] == pytest.approx(by_hand / 1e12)
        assert r["flops"]["mfu"] == pytest.approx(r["flops"]["achieved_tflops"] / 1.0)  # --peak_tflops 1
    sys.modules.pop(spec.name, None)
    assert p["inference.eager_sdpa"]["num_frame_per_block"] == 3
    assert p["inference.framewise"]["num_frame_per_block"] == 1
    assert p["inference.compile"]["options"]["compile"] and p["inference.overlap_decode"]["with_vae"]["overlap_decode"]
    switch = p["inference.prompt_switch"]
    assert switch["window_frames"] == 6 and switch["recache_forwards"] == 2 and switch["next_block_s"]["median"] > 0
    assert "initial_latent" in switch["method"]
    # bf16 is not fp32, and not far from it; FlexAttention and SDPA compute the same masked attention
    assert 0 < p["numerics.bf16_vs_fp32"]["rollout"]["rel_err"] < 5e-2
    assert p["numerics.flex_vs_sdpa"]["rel_err"] < 2e-2
    assert p["numerics.compiled_vs_eager"]["rel_err"] < 2e-2
    for name in ("dmd", "causal_ode", "teacher_forcing"):
        r = p[f"training.{name}"]
        assert r["seconds_per_step"] > 0 and r["fsdp2_world_size"] == 1 and r["peak_memory"]["peak_bytes"] > 0
        assert all(math.isfinite(v) for v in r["steps"][-1]["losses"].values())
    assert set(p["training.dmd"]["steps"][-1]["losses"]) == {"generator_loss", "critic_loss"}
    wan14b = p["wan14b.block_forward"]
    assert wan14b["preset"] == dc.SMOKE_14B_PRESET and wan14b["forwards"] == 4 + 1 and wan14b["block_s"]["median"] > 0
    assert f"wrote {out}" in capsys.readouterr().out.splitlines()[-1]


def test_forced_failure_still_writes_the_other_parts(tmp_path):
    out = tmp_path / "check.json"
    dc.main(["--smoke", "--threads", "1", "--out", str(out), "--parts", "environment,training.causal_ode",
             "--fail_part", "environment"])
    parts = json.loads(out.read_text())["parts"]
    assert set(parts) == {p.name for p in dc.default_parts()}
    assert parts["environment"]["status"] == "error" and "forced failure" in parts["environment"]["error"]
    assert parts["training.causal_ode"]["status"] == "ok" and parts["training.causal_ode"]["result"]["seconds_per_step"]
    assert parts["inference.eager_sdpa"] == {"status": "skipped", "reason": "not selected (--parts)"}


class _Stub:
    """What run_parts needs of a Check."""
    results = None

    def log(self, msg):
        pass

    def free(self):
        pass


def test_runner_records_each_part_on_disk_as_it_finishes(tmp_path):
    out = tmp_path / "check.json"

    def on_disk(_):
        return {name: part["status"] for name, part in json.loads(out.read_text())["parts"].items()}

    def boom(_):
        raise ValueError("boom")

    def skip(_):
        raise dc.SkipPart("not here")

    parts = [dc.Part("a", lambda _: {"x": 1}), dc.Part("b", on_disk), dc.Part("c", boom), dc.Part("d", skip),
             dc.Part("e", on_disk), dc.Part("f", boom)]
    keep = {"f": {"status": "ok", "result": {"y": 2}}}
    results = dc.run_parts(parts, _Stub(), out, {"smoke": True}, budget_s=60, keep=keep)
    assert json.loads(out.read_text()) == results
    p = results["parts"]
    assert p["a"]["result"] == {"x": 1}
    assert p["b"]["result"] == {"a": "ok", "b": "pending", "c": "pending", "d": "pending", "e": "pending",
                                "f": "pending"}
    assert p["c"]["status"] == "error" and p["c"]["error"] == "ValueError: boom" and "boom" in p["c"]["traceback"][-1]
    assert p["d"] == {"status": "skipped", "reason": "not here", "seconds": p["d"]["seconds"]}
    assert p["e"]["result"] == {"a": "ok", "b": "ok", "c": "error", "d": "skipped", "e": "pending", "f": "pending"}
    assert p["f"] == {"status": "ok", "result": {"y": 2}, "kept_from_earlier_run": True}  # --keep_done: not rerun
    assert results["meta"] == {"smoke": True, "state": "finished", "elapsed_s": results["meta"]["elapsed_s"]}


def test_budget_stops_cleanly(tmp_path):
    def out_of_time(_):  # what the SIGALRM handler raises in the running part
        raise dc.BudgetExceeded("the budget of 60 s ran out")

    parts = [dc.Part("a", lambda _: {"x": 1}), dc.Part("b", out_of_time), dc.Part("c", lambda _: {"x": 3})]
    p = dc.run_parts(parts, _Stub(), tmp_path / "a.json", {}, budget_s=60)
    assert p["meta"]["state"] == "stopped: the budget of 60 s ran out"
    assert p["parts"]["a"]["status"] == "ok" and p["parts"]["b"]["error"].startswith("stopped: the budget")
    assert p["parts"]["c"] == {"status": "skipped", "reason": "not started: the budget of 60 s ran out"}
    none = dc.run_parts(parts, _Stub(), tmp_path / "b.json", {}, budget_s=0)["parts"]
    assert all(part["status"] == "skipped" and "budget" in part["reason"] for part in none.values())
    # a rerun (--keep_done --parts c) keeps what the first run measured, whatever it selects
    rerun = dc.run_parts(parts, _Stub(), tmp_path / "a.json", {}, budget_s=60, selection=["c"], keep=p["parts"])
    assert rerun["parts"]["a"] == dict(p["parts"]["a"], kept_from_earlier_run=True)
    assert rerun["parts"]["b"]["reason"] == "not selected (--parts)" and rerun["parts"]["c"]["result"] == {"x": 3}


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown part\(s\) \['nosuch'\]"):
        dc.main(["--smoke", "--out", str(tmp_path / "x.json"), "--parts", "nosuch"])
    assert not (tmp_path / "x.json").exists()
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device here; run with --smoke"):
            dc.main(["--out", str(tmp_path / "x.json")])


def test_peak_table():
    assert dc.peak_tflops("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert dc.peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert dc.peak_tflops("NVIDIA H200")[0] == 989.0
    assert dc.peak_tflops("Some New GPU")[0] is None
