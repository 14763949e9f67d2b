"""The toy pipeline end to end at a few steps per stage: each stage's output feeds the next (the real trainer,
LMDB, ODE and rollout code), the report is written, and a second run resumes by skipping finished stages.
Quality is not asserted here (a few steps train nothing); the full run's figures are in the report."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from causvid.toy.evaluate import SINK_CHOICES
from causvid.toy.pipeline import LAYOUTS, main
from causvid.toy.schedule import cores

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "toy"


def _tensors(folder):
    with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), "pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


@pytest.mark.long(30)
def test_quick_pipeline_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "toy"
    release = tmp_path / "release"
    # two worker processes (the default on 2 cores) and the chunkwise path (checkpoints/toy's; the framewise one, the
    # shipped checkpoints/toy_long's, is the same stages with other configs, the optional students the chunkwise
    # one's stage with other overrides: see the graph tests below; the LoRA extraction has a test of its own)
    optional = ["--layouts", "chunkwise"]
    assert main(["--out", str(out), "--quick", "--release", str(release), "--workers", "2", *optional]) == 0
    stages = ["base", "data", "teacher", "ode_pairs", "evaluate", "evaluate/teacher"] + [
        f"{s}_chunkwise" for s in ("ar_diffusion", "causal_ode_data", "cf_ode", "cf_dmd", "cf_cd", "cfpp_dmd")]
    stages += ["causvid_ode_chunkwise", "causvid_dmd_chunkwise", "cf_dmd_chunkwise_long"]
    stages += [f"evaluate/{s}" for s in stages if s.startswith(("causvid_", "cf_", "cfpp_", "ar_"))]
    for stage in stages:
        assert (out / stage / "DONE").exists(), stage
    done = {s: json.loads((out / s / "DONE").read_text()) for s in stages}
    # the teacher runs alone, with every thread; stages side by side share them
    assert done["teacher"]["threads"] == cores() and done["evaluate/cf_dmd_chunkwise"]["threads"] == max(
        1, cores() // 2)
    assert (out / "cf_dmd_chunkwise" / "log.txt").read_text()  # a worker's output goes to its stage's log
    for stage in ("causvid_dmd_chunkwise", "cf_dmd_chunkwise", "ar_diffusion_chunkwise"):
        assert list((out / stage / "run").glob("checkpoint_model_*/model.pt")), stage
    results = json.loads((out / "evaluate" / "results.json").read_text())
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(s for s in stages if "/" not in s)
    # teacher + 6 chunkwise models (AR diffusion; CF ODE init and DMD, also with long rollouts; CF++ CD and DMD)
    # + CausVid's ODE init and DMD
    assert len(results) == 9
    assert all(r["overrides"] == [] for r in results.values())
    long = results["Causal Forcing DMD (chunkwise)"]["long_video"]  # overlap vs rolling, same length
    assert set(long) == {"latent_frames", "overlap", "rolling"} and long["overlap"]["drift_all_acc"]
    # drift by sink choice for the CF DMD students with and without long rollouts, each attribute per window
    for name in ("Causal Forcing DMD (chunkwise)", "Causal Forcing DMD (chunkwise, long rollout x2)"):
        drift = results[name]["drift"]
        assert list(drift) == list(SINK_CHOICES), name
        assert all(len(d[k]) == 3 for d in drift.values() for k in ("all_acc", "colour_acc", "shape_acc",
                                                                      "direction_acc", "background_err"))
    assert list(results["CausVid DMD (chunkwise)"]["drift"]) == ["one-block sink"]
    assert results["teacher (50-step, bidirectional)"]["drift"] == {}  # no rolling window: not measured
    assert {name for name, r in results.items() if "streaming" in r} == {  # the shipped student and its twin
        "Causal Forcing DMD (chunkwise)", "Causal Forcing DMD (chunkwise, long rollout x2)"}
    assert all(r["first_frame_s"] > 0 and r["fps"] > 0 for r in results.values())
    assert (out / "evaluate" / "drift.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "A smoke run (`--quick`)" in report and "nan" not in report  # says what it is; no 0/0 ratios
    rows = [line for line in report.splitlines() if line.startswith("| ") and "|---" not in line]
    assert any("Causal Forcing DMD (chunkwise)" in r for r in rows) and any("teacher" in r for r in rows)
    assert re.search(r"\| \*\*total\*\* \| \d+ \|", report) and "| **wall clock** |" in report
    assert "## LoRA students" not in report  # only with --lora_comparison
    assert all((out / "evaluate" / r["strip"]).exists() for r in results.values())
    before = {s: (out / s / "DONE").stat().st_mtime_ns for s in stages}
    assert main(["--out", str(out), "--quick", *optional]) == 0  # resumes: nothing redone
    assert before == {s: (out / s / "DONE").stat().st_mtime_ns for s in stages}

    # the shipped checkpoint is what this command makes (at full steps): same files, keys, shapes and dtypes
    assert _tensors(release) == _tensors(SHIPPED)
    for name in ("config.json", "toy_world.json", "model_index.json"):
        assert (release / name).read_text() == (SHIPPED / name).read_text(), name
    assert json.loads((release / "release.json").read_text())["reproduce"] == \
        json.loads((SHIPPED / "release.json").read_text())["reproduce"]


def test_a_stopped_training_stage_is_not_marked_done(tmp_path, monkeypatch, capsys):
    """SIGTERM or Ctrl-C makes the trainer save and return early: the stage must not count as finished (a rerun
    resumes it), and the run ends with one line saying so."""
    from causvid.training.trainer import Trainer

    def stopped(self):
        self.stop_requested, self.stop_signal = True, "SIGTERM"
        return []
    monkeypatch.setattr(Trainer, "train", stopped)
    out = tmp_path / "toy"
    assert main(["--out", str(out), "--quick", "--workers", "1"]) == 130
    assert (out / "data" / "DONE").exists() and not (out / "teacher" / "DONE").exists()
    assert "[teacher] stopped by SIGTERM at step 0 of 2; run the same command again to resume" in \
        capsys.readouterr().err


def test_optional_students_are_stages_fed_like_the_shipped_students(tmp_path):
    """--cache_gradient_comparison, --lora_comparison and --step_schedules add chunkwise (and, for the detached
    gradient, framewise) CF DMD students started from the same CF ODE init as the shipped one, each with its own
    overrides, each judged (the step-schedule students with their own schedules and every sink choice), and the
    extraction of the shipped student's LoRAs. The end-to-end run above leaves them out (their stages are the
    same `train` and `evaluate` calls); here the graph is read and each stage's config loads with its overrides."""
    from causvid.toy.pipeline import CONFIGS, LORA_LR, LORA_RANKS, STEP_SCHEDULES, Budget, Ref, ToyPipeline
    from causvid.config import load_config

    budget = Budget.quick()
    plain = ToyPipeline(tmp_path, budget).stages
    budget.cache_gradient_comparison = budget.lora_comparison = budget.step_schedules = 1
    stages = ToyPipeline(tmp_path, budget).stages
    extra = {name: stages[name] for name in stages if name not in plain}
    trained = [f"cf_dmd_{layout}_detached" for layout in LAYOUTS] + [f"cf_dmd_chunkwise_lora{r}" for r in LORA_RANKS]
    trained += [f"cf_dmd_chunkwise_{suffix}" for suffix in STEP_SCHEDULES]
    assert sorted(extra) == sorted(trained + [f"evaluate/{name}" for name in trained] + ["lora_extraction"])

    def read(kwargs):  # a Ref as what it names
        return {k: (v.stage, v.parts, v.last) if isinstance(v, Ref) else read(v) if isinstance(v, dict) else v
                for k, v in kwargs.items()}
    assert all(read(plain[n].kwargs) == read(stages[n].kwargs) for n in plain if n != "evaluate")
    expected = {f"cf_dmd_{layout}_detached": {"kv_cache_gradient": "detached"} for layout in LAYOUTS}
    expected.update({f"cf_dmd_chunkwise_lora{r}": {"lr": LORA_LR, "lora.generator.rank": r} for r in LORA_RANKS})
    expected.update({f"cf_dmd_chunkwise_{suffix}": s for suffix, s in STEP_SCHEDULES.items()})
    for name, own in expected.items():
        layout = name.split("_")[2]
        stage, shipped = stages[name], stages[f"cf_dmd_{layout}"]
        assert stage.fn == "train" and stage.deps == shipped.deps, name
        assert read(stage.kwargs) == read({**shipped.kwargs, **own}), name  # the shipped student's inputs plus its own
        fixed = {k: v for k, v in stage.kwargs.items() if k not in ("config", "steps") and not isinstance(v, Ref)}
        cfg = load_config(CONFIGS / f"{stage.kwargs['config']}.yaml", overrides=[f"{k}={v}" for k, v in fixed.items()])
        if "lora.generator.rank" in own:
            assert cfg.lora.generator.rank == own["lora.generator.rank"] and cfg.lr == LORA_LR
        elif "kv_cache_gradient" in own:
            assert cfg.kv_cache_gradient == "detached"
        else:
            assert cfg.denoising_step_list == [1000, 500]
            assert cfg.denoising_step_list_per_block == ([[1000, 750, 500, 250]] if name.endswith("4to2") else None)
        judged = stages[f"evaluate/{name}"].kwargs
        assert judged["checkpoint"].stage == name and judged["config"] == f"cf_dmd_{layout}"
        schedule = STEP_SCHEDULES.get(name.rpartition("_")[2], {})
        assert judged["overrides"] == [f"{k}={v}" for k, v in schedule.items()] and judged["sink_choices"] == bool(
            schedule) and not judged["streams"]
    smoke = ToyPipeline(tmp_path, budget, smoke=True).stages  # --quick: the largest LoRA rank alone
    assert [n for n in smoke if "_lora" in n] == [f"cf_dmd_chunkwise_lora{LORA_RANKS[-1]}",
                                                  f"evaluate/cf_dmd_chunkwise_lora{LORA_RANKS[-1]}"]
    extraction = stages["lora_extraction"]
    assert extraction.fn == "extract_loras" and extraction.deps == ("teacher", "cf_dmd_chunkwise")
    assert extraction.kwargs["student"].last and extraction.kwargs["config"] == "cf_dmd_chunkwise"
    assert set(stages["evaluate"].kwargs["parts"]) == set(plain["evaluate"].kwargs["parts"]) | {
        stages[f"evaluate/{name}"].kwargs["model"] for name in trained}


def test_the_framewise_path_is_the_chunkwise_one_in_its_own_configs(tmp_path, capsys):
    """The whole graph is the chunkwise path's (what `--layouts chunkwise` runs, the end-to-end test above) plus
    the framewise path: the same stages reading the same kinds of inputs, with the framewise configs and a
    1-frame block for the causal ODE data, plus CF++'s 1- and 2-step framewise students (CausVid runs chunkwise
    only). --layouts refuses what it does not know."""
    from causvid.toy.pipeline import Budget, Ref, ToyPipeline

    full = ToyPipeline(tmp_path, Budget.quick()).stages
    chunkwise = ToyPipeline(tmp_path, Budget.quick(), layouts=("chunkwise",)).stages
    framewise = {name for name in full if "framewise" in name}
    assert set(chunkwise) == set(full) - framewise and not any("framewise" in n for n in chunkwise)
    only = {"cfpp_dmd_framewise_1step", "cfpp_dmd_framewise_2step"}
    assert {n.replace("framewise", "chunkwise") for n in framewise if n.removeprefix("evaluate/") not in only} == {
        n for n in chunkwise if "chunkwise" in n and "causvid" not in n}

    def named(value, layout):  # what a stage reads, its layout's name made neutral
        if isinstance(value, Ref):
            return value.stage.replace(layout, "*"), value.parts, value.last
        if isinstance(value, dict):
            return {k: named(v, layout) for k, v in value.items()}
        return value.replace(layout, "*") if isinstance(value, str) else value
    for name in framewise - only - {f"evaluate/{n}" for n in only}:
        twin = full[name.replace("framewise", "chunkwise")]
        mine = full[name]
        assert mine.fn == twin.fn and [d.replace("framewise", "*") for d in mine.deps] == [
            d.replace("chunkwise", "*") for d in twin.deps], name
        kwargs, twins = named(mine.kwargs, "framewise"), named(twin.kwargs, "chunkwise")
        if mine.fn == "make_causal_ode_data":
            assert (kwargs.pop("block"), twins.pop("block")) == (1, 3)
        if mine.fn == "evaluate":
            kwargs, twins = ({k: v for k, v in kw.items() if k != "streams"} for kw in (kwargs, twins))
        assert kwargs == twins, name
    assert full["cfpp_dmd_framewise_1step"].kwargs["config"] == "cf_dmd_framewise_1step"
    assert full["cfpp_dmd_framewise_2step"].kwargs["generator_ckpt"].stage == "cf_cd_framewise"

    for argv, message in ((["--layouts", "chunky"], "--layouts chunky: choose from framewise, chunkwise"),
                          (["--world_speed", "0"], "--world_speed 0: expected an integer >= 1"),
                          (["--start_offsets", "-4"], "--start_offsets -4: expected an integer >= 0")):
        with pytest.raises(SystemExit) as usage:
            main(["--out", str(tmp_path / "out"), "--quick", *argv])
        assert usage.value.code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "out").exists() and not (tmp_path / "r").exists()


def test_long_video_runs_the_framewise_path_on_offset_clips_and_ships_its_student(tmp_path, monkeypatch):
    """--long_video: clips cut at every latent-aligned start, the framewise AR model trained 1,600 steps, the
    framewise path alone (so no CausVid ODE pairs), its DMD students measured streaming and shipped by --release
    with the command that remakes them; flags given beside it win, and a run with the chunkwise path ships the
    chunkwise student as before."""
    from causvid.toy.pipeline import ToyPipeline

    seen = []

    def run(self, release=None):
        seen.append(self)
        return tmp_path / "report.md"
    monkeypatch.setattr(ToyPipeline, "run", run)
    assert main(["--out", str(tmp_path / "a"), "--long_video"]) == 0
    (p,) = seen
    assert (p.budget.start_offsets, p.budget.ar_steps, p.budget.teacher_steps) == (4, 1600, 2500)
    assert list(p.layouts) == ["framewise"]
    assert p.release_stage == "cf_dmd_framewise" and "ode_pairs" not in p.stages
    assert p.command == "python -m causvid.toy.pipeline --out runs/toy_long --long_video --release checkpoints/toy_long"
    streams = {n for n, s in p.stages.items() if s.fn == "evaluate" and s.kwargs["streams"]}
    assert streams == {"evaluate/cf_dmd_framewise", "evaluate/cf_dmd_framewise_long"}
    assert main(["--out", str(tmp_path / "b"), "--long_video", "--ar_steps", "800",
                 "--layouts", "framewise,chunkwise"]) == 0
    p = seen[-1]
    assert (p.budget.start_offsets, p.budget.ar_steps) == (4, 800) and p.release_stage == "cf_dmd_chunkwise"
    assert "ode_pairs" in p.stages and p.stages["evaluate/cf_dmd_chunkwise"].kwargs["streams"]
    assert main(["--out", str(tmp_path / "c"), "--quick", "--long_video"]) == 0  # a smoke run keeps its few steps
    assert (seen[-1].budget.ar_steps, seen[-1].budget.start_offsets) == (1, 4)


def test_the_lora_extraction_stage_holds_a_low_rank_change_and_the_report_tables_it(tmp_path):
    """--lora_comparison's last stage (left out of the end-to-end run above, where it is the slowest) on the shipped
    student as the teacher and a student that differs from it by a rank-2 change of each block's self-attention
    query: both ranks a smoke run extracts (4 and 64) hold that change exactly (weight and output error 0), each
    merged model is judged alike; the report's LoRA section tables the ranks, and the students with their
    trainable parameters (the checkpoint's generator entries) and steps/s (steps over the stage's seconds)."""
    from causvid.pipelines.text_to_video import load_dit
    from causvid.toy.evaluate import _lora_section
    from causvid.toy.pipeline import Budget, ToyPipeline

    state = load_dit(SHIPPED).state_dict()
    g = torch.Generator().manual_seed(0)
    for name in [n for n in state if n.endswith("self_attn.q.weight")]:
        out_dim, in_dim = state[name].shape
        state[name] = state[name] + 0.05 * torch.randn(out_dim, 2, generator=g) @ torch.randn(2, in_dim, generator=g)
    student = tmp_path / "student" / "model.pt"
    student.parent.mkdir()
    torch.save({"generator": state}, student)
    out = tmp_path / "out"
    (out / "lora_extraction").mkdir(parents=True)
    ToyPipeline(out, Budget.quick(), smoke=True).extract_loras(out / "lora_extraction", SHIPPED, student,
                                                             "cf_dmd_chunkwise")
    extracted = json.loads((out / "lora_extraction" / "result.json").read_text())
    assert list(extracted) == ["4", "64"]
    for rank, r in extracted.items():  # each rank judged from its own file: its size grows with the rank
        path = out / "lora_extraction" / f"lora_rank{rank}.safetensors"
        assert r["megabytes"] == path.stat().st_size / 2**20 and r["weight_error"] < 1e-4 and r["output_error"] < 1e-4
    assert extracted["64"]["megabytes"] > 8 * extracted["4"]["megabytes"]
    scores = ("colour_acc", "shape_acc", "direction_acc", "all_acc")
    assert [extracted["4"][k] for k in scores] == [extracted["64"][k] for k in scores]

    full, lora = "Causal Forcing DMD (chunkwise)", "Causal Forcing DMD (chunkwise, LoRA rank 16)"
    results = {name: {"colour_acc": 1.0, "shape_acc": 0.5, "direction_acc": 0.25, "all_acc": 0.125,
                      "strip": f"{stage}/strip.png"} for name, stage in ((full, "cf_dmd_chunkwise"),
                                                                         (lora, "cf_dmd_chunkwise_lora16"))}
    for stage, generator in (("cf_dmd_chunkwise", {"w": torch.zeros(10, 3)}),
                             ("cf_dmd_chunkwise_lora16", {"a": torch.zeros(2, 2)})):
        (out / stage / "run" / "checkpoint_model_000004").mkdir(parents=True)
        torch.save({"generator": generator}, out / stage / "run" / "checkpoint_model_000004" / "model.pt")
    lines = _lora_section(out, results, {"cf_dmd_chunkwise": {"seconds": 2.0},
                                         "cf_dmd_chunkwise_lora16": {"seconds": 8.0}})
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert rows[1].startswith(f"| {full} | 30 | ") and rows[1].endswith(" | 2.00 | 1.00 | 0.50 | 0.25 | 0.12 |")
    assert rows[2].startswith(f"| {lora} | 4 | ") and rows[2].endswith(" | 0.50 | 1.00 | 0.50 | 0.25 | 0.12 |")
    assert [r.split(" | ")[0] for r in rows[4:]] == ["| 4", "| 64", "| the student"]
    assert rows[4].startswith("| 4 | 0.000 | 0.000 | ")


@pytest.mark.parametrize("grid, speed", [(4, 1), (4, 2)])
def test_offset_clips_start_on_the_grid_along_the_line_of_motion(tmp_path, grid, speed):
    """--start_offsets N --world_speed V: each training clip is the centred video cut N*k frames later, so its first
    frame shows the shape N*V*k pixels from the centre along its direction (every k drawn), and it moves V pixels a
    frame. Read back from the LMDB, decoded, and located from the pixels (the centroid of those off the background)."""
    from causvid.data.datasets import LatentLMDBDataset
    from causvid.pipelines.text_to_video import load_vae
    from causvid.toy import world
    from causvid.toy.pipeline import Budget, ToyPipeline

    pipeline = ToyPipeline(tmp_path, Budget(videos=64, start_offsets=grid, world_speed=speed))
    pipeline.make_base(tmp_path / "base")
    (tmp_path / "data").mkdir()
    pipeline.make_data(tmp_path / "data")
    rows = LatentLMDBDataset(tmp_path / "data" / "latents")
    vae = load_vae(tmp_path / "base")
    background = torch.tensor(world.BACKGROUND) * 2 - 1
    seen = set()
    ys, xs = torch.meshgrid(torch.arange(32.0) + 0.5, torch.arange(32.0) + 0.5, indexing="ij")

    def centre(frame):  # the shape's wrapped centroid (circular mean along each axis), in pixels
        mask = ((frame - background[:, None, None]).abs().sum(0) > 0.5).float()
        angle = lambda v: torch.atan2((mask * torch.sin(v * torch.pi / 16)).sum(),  # noqa: E731
                                      (mask * torch.cos(v * torch.pi / 16)).sum()) * 16 / torch.pi % 32
        return float(angle(xs)), float(angle(ys))

    for i in range(len(rows)):
        row = rows[i]
        shape, colour, direction = world.parse_caption(row["prompts"])
        dx, dy = world.DIRECTION_VECTORS[direction]
        frames = vae.decode(row["clean_latent"][None])[0]  # [T, 3, 32, 32]
        (x0, y0), (x4, y4) = centre(frames[0]), centre(frames[4])  # two keyframes, decoded exactly
        # the centred still of the same shape (a triangle's centroid is not its box's centre)
        cx, cy = centre(world.render(world.VideoSpec(shape, colour, direction, 16, 16), 1)[0])
        along, across = (x0 - cx, y0 - cy) if dx else (y0 - cy, x0 - cx)
        assert (across + 16) % 32 - 16 == pytest.approx(0, abs=0.3)  # on the line through the centre
        shift = (along * (dx or dy)) % 32  # how far along its own direction it starts
        steps = shift / (grid * speed)
        assert steps == pytest.approx(round(steps), abs=0.1), (row["prompts"], shift)
        seen.add(round(steps) % (32 // (grid * speed)))
        moved = (((x4 - x0) * dx + (y4 - y0) * dy) + 16) % 32 - 16
        assert moved == pytest.approx(4 * speed, abs=0.3)
    assert seen == set(range(32 // (grid * speed)))  # every start on the grid is drawn
