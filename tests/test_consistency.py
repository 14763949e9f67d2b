"""Causal consistency distillation (Causal Forcing++ stage 2b) and the 1/2-step framewise students it feeds:
the loss equals a hand computation from WanDiT calls, it falls on a fixed batch, `train.py` runs from an
AR-diffusion checkpoint, resumes exactly after a kill and exports a checkpoint that inference.py and the DMD
stage load; the 1- and 2-step students sample at their configs' per-block timesteps through inference.py."""
import re
from pathlib import Path

import pytest
import torch

from causvid.config import load_config
from causvid.models.wan import WanDiT
from causvid.training import distributed as D
from causvid.training.checkpointing import latest_checkpoint
from causvid.training.cli import main as train_py
from causvid.training.losses import consistency_distillation_loss
from causvid.training.stages import Models, make_stage
from causvid.training.trainer import Trainer
from causvid.tiny_wan.dit import random_dit
from causvid.video_io import video_info

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"
inference = load_script("inference.py").main


def overrides(data, dataset, **kw):
    base = {"wan_model_path": data / "wan", "real_model_path": data / "wan", "data_path": data / dataset,
            "generator_ckpt": "null", "gradient_checkpointing": "false", "log_iters": 1000, **kw}
    return [f"{k}={v}" for k, v in base.items()]


def shifted(sigma, shift=5.0):
    return shift * sigma / (1 + (shift - 1) * sigma)


def test_cd_loss_equals_a_hand_computation_from_wandit_calls():
    stage = make_stage(load_config(TINY / "causal_cd_chunkwise.yaml"))  # chunkwise, N = 48, CFG 3, shift 5
    student, teacher, target = (random_dit("tiny", seed=s) for s in (1, 2, 3))
    batch_size, frames = 2, 6
    x0, noise = torch.randn(batch_size, frames, 16, 4, 4), torch.randn(batch_size, frames, 16, 4, 4)
    context, negative = torch.randn(batch_size, 16, 32), torch.randn(batch_size, 16, 32)
    n = torch.tensor([5, 46])  # one grid index per video; 46 = N - 2, the last one drawn

    def levels(count, num_frames, batch, step, tag, device, per_block):
        assert count == 47 and not per_block  # n in [0, N - 2], one per video (CF)
        return n[:, None].expand(-1, num_frames)

    stage.levels = levels
    stage.noise = lambda like, batch, step, *tag: noise
    batch = {"samples": [0, 1], "clean": x0, "context": context, "negative": negative}
    loss = stage.generator_loss(Models(student, teacher=teacher, target=target), batch, 0)

    # by hand: 48 Euler levels sigma_i = shift(1 - i / 48), one teacher step with Wan-form CFG 3, both x0's
    sigma = shifted(1 - n.double() / 48)[:, None, None, None, None]
    sigma_next = shifted(1 - (n.double() + 1) / 48)[:, None, None, None, None]
    t, t_next = (1000 * sigma.flatten()).float(), (1000 * sigma_next.flatten()).float()
    kw = dict(clean_x=x0, causal=True, num_frame_per_block=3)
    with torch.no_grad():
        x_t = ((1 - sigma) * x0 + sigma * noise).float()
        cond, uncond = teacher(x_t, t, context, **kw), teacher(x_t, t, negative, **kw)
        x_next = (x_t + (sigma_next - sigma) * (uncond + 3.0 * (cond - uncond))).float()
        target_x0 = x_next - sigma_next * target(x_next, t_next, context, **kw)
        student_x0 = x_t - sigma * student(x_t, t, context, **kw)
    expected = (student_x0 - target_x0).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() > 1e-3  # not trivially zero
    torch.testing.assert_close(stage.last_output, student_x0.float(), rtol=1e-5, atol=1e-5)  # what is visualised

    loss.backward()  # the gradient reaches the student alone
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for m in (teacher, target) for p in m.parameters())


def test_cd_loss_boundary_takes_the_euler_result_as_target():
    student_x0, target_x0, x_next = (torch.randn(1, 3, 16, 4, 4) for _ in range(3))
    t_next = torch.tensor([[0.0, 96.2, 0.0]])  # frames 0 and 2 at the boundary t_next = 0
    expected = torch.stack([student_x0[:, 0] - x_next[:, 0], student_x0[:, 1] - target_x0[:, 1],
                            student_x0[:, 2] - x_next[:, 2]], dim=1).pow(2).mean()
    got = consistency_distillation_loss(student_x0, target_x0, x_next, t_next)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_cd_draws_one_grid_level_per_video():
    """Without patching: every frame of a video gets the same t, on the 48-level grid, different across videos."""
    stage = make_stage(load_config(TINY / "causal_cd_framewise.yaml"))
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, t, context, **kw):
            seen.append(t.clone())
            return torch.zeros_like(x)

    x0 = torch.randn(8, 4, 16, 4, 4)
    batch = {"samples": list(range(8)), "clean": x0, "context": torch.randn(8, 16, 32),
             "negative": torch.zeros(8, 16, 32)}
    stage.generator_loss(Models(Recorder(), teacher=Recorder(), target=Recorder()), batch, 3)
    grid = torch.tensor([1000 * shifted(1 - i / 48) for i in range(48)])
    t_teacher, _, t_target, t_student = seen
    assert torch.equal(t_teacher, t_student)
    for t, levels in ((t_student, grid[:-1]), (t_target, grid[1:])):
        assert (t == t[:, :1]).all()  # per video
        assert torch.isclose(t[:, :1], levels.float()[None, :], atol=1e-3).any(dim=1).all()  # on the grid
    assert len(set(t_student[:, 0].tolist())) > 1
    step_of = {round(float(a), 3): i for i, a in enumerate(grid)}
    assert all(step_of[round(float(b), 3)] == step_of[round(float(a), 3)] + 1
               for a, b in zip(t_student[:, 0], t_target[:, 0]))  # the target one level further down


def test_cd_loss_falls_on_a_fixed_batch(tiny_run_data, tmp_path):
    cfg = load_config(TINY / "causal_cd_chunkwise.yaml",
                      overrides=overrides(tiny_run_data, "latents", max_iters=6, lr=3e-4, weight_decay=0))
    t = Trainer(cfg, tmp_path, no_visualize=True, no_save=True)
    fixed = t.batch(0, 0)
    loss_fn = t.stage.generator_loss
    t.batch = lambda step, micro, role="generator": fixed
    t.stage.generator_loss = lambda models, batch, step: loss_fn(models, batch, 0)  # same level, noise, step
    curve = [logs["generator_loss"] for _, logs in t.train()]
    assert curve[-1] < 0.3 * curve[0], curve


class Killed(Exception):
    """Stands for the process dying (kill -9): no handler runs, nothing is saved."""


def logged_losses(logdir):
    return [(int(m.group(1)), float(m.group(2))) for m in
            re.finditer(r"^step (\d+) generator_loss (\S+)$", (logdir / "log.txt").read_text(), re.M)]


def test_train_py_from_an_ar_checkpoint_resumes_exactly_and_exports(tiny_run_data, tmp_path, monkeypatch):
    data = tiny_run_data
    common = ["--no_visualize", "--disable-wandb"]
    ar = tmp_path / "ar"  # a tiny AR-diffusion (stage 1) checkpoint
    assert train_py(["--config_path", str(TINY / "ar_diffusion_tf_chunkwise.yaml"), "--logdir", str(ar), *common,
                     *overrides(data, "latents", max_iters=1, log_iters=1, lr=1e-3)]) == 0
    ar_ckpt = ar / "checkpoint_model_000001" / "model.pt"

    def argv(run, *extra):
        return ["--config_path", str(TINY / "causal_cd_chunkwise.yaml"), "--logdir", str(run), *common, *extra,
                *overrides(data, "latents", generator_ckpt=ar_ckpt, max_iters=4, log_iters=2, lr=3e-4)]

    reference, run = tmp_path / "reference", tmp_path / "killed"
    assert train_py(argv(reference)) == 0
    expected = dict(logged_losses(reference))
    assert sorted(expected) == [1, 2, 3, 4]

    train_step = Trainer.train_step

    def dies_at_step_3(self):  # after 3 steps; the last checkpoint is step 2's
        if self.step == 3:
            raise Killed
        return train_step(self)

    monkeypatch.setattr(Trainer, "train_step", dies_at_step_3)
    with pytest.raises(Killed):
        train_py(argv(run))
    monkeypatch.setattr(Trainer, "train_step", train_step)
    assert latest_checkpoint(run).name == "checkpoint_model_000002"
    assert train_py(argv(run, "--resume")) == 0
    logged = logged_losses(run)
    assert [s for s, _ in logged] == [1, 2, 3, 4]  # resuming cuts log.txt back to step 2's checkpoint
    for step, value in logged:
        assert value == pytest.approx(expected[step], rel=1e-6, abs=1e-9), step
    final = {name: torch.load(folder / "checkpoint_model_000004" / "model.pt") for name, folder in
             (("reference", reference), ("resumed", run))}
    assert sorted(final["resumed"]) == ["generator", "generator_ema"]  # the published layout
    for key in ("generator", "generator_ema"):
        a, b = final["reference"][key], final["resumed"][key]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key
    ar_weights = torch.load(ar_ckpt)["generator"]
    assert any(not torch.equal(ar_weights[k], final["resumed"]["generator"][k]) for k in ar_weights)  # trained

    exported = run / "checkpoint_model_000004" / "model.pt"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left\n")
    out = tmp_path / "videos"  # the exported EMA (what Causal Forcing's CD checkpoints hold) samples in 4 steps
    assert inference(["--config_path", str(TINY / "causal_cd_chunkwise.yaml"), "--checkpoint_path", str(exported),
                      "--use_ema", "--data_path", str(prompts), "--output_folder", str(out),
                      "--wan_model_path", str(data / "wan")]) == 0
    assert video_info(out / "a red square moving left.mp4")[:3] == (21, 32, 32)  # 6 latent frames

    # the DMD stage starts from it (generator_ckpt reads its 'generator')
    dmd = Trainer(load_config(TINY / "causal_forcing_dmd_chunkwise.yaml",
                              overrides=overrides(data, "prompts.txt", generator_ckpt=exported)),
                  tmp_path / "dmd", no_visualize=True, no_save=True)
    loaded = D.full_model_state(dmd.models.generator)
    cd = final["resumed"]["generator"]
    assert all(torch.equal(loaded[k], cd["model." + k]) for k in loaded) and len(loaded) == len(cd)


@pytest.mark.parametrize("name,later_blocks", [
    ("causal_forcing_dmd_framewise_1step", [1000.0]),
    ("causal_forcing_dmd_framewise_2step", [1000.0, 2500 / 3]),  # warp of 500 at shift 5: 1000 * 2.5 / 3
])
def test_one_and_two_step_framewise_students_sample_at_their_schedules(tiny_run_data, tmp_path, monkeypatch,
                                                                       name, later_blocks):
    student = tmp_path / "student.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in random_dit("tiny", seed=5).state_dict().items()}},
               student)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue circle moving up\n")
    calls = []
    forward = WanDiT.forward

    def recording(self, x, t, context, **kw):
        calls.append((kw.get("start_frame"), x.shape[1], [round(v, 3) for v in t.flatten().tolist()]))
        return forward(self, x, t, context, **kw)

    monkeypatch.setattr(WanDiT, "forward", recording)
    out = tmp_path / "out"
    assert inference(["--config_path", str(TINY / f"{name}.yaml"), "--checkpoint_path", str(student),
                      "--data_path", str(prompts), "--output_folder", str(out),
                      "--wan_model_path", str(tiny_run_data / "wan")]) == 0
    assert video_info(out / "a blue circle moving up.mp4")[:3] == (13, 32, 32)  # 4 latent frames
    # block 0: the first-chunk list [1000, 750, 500, 250] warped at shift 5; then each block's cache write at t = 0
    first = [1000.0, 937.5, 2500 / 3, 625.0]
    expected = [(0, 1, [pytest.approx(v, abs=1e-3)]) for v in first + [0.0]]
    for start in (1, 2, 3):
        expected += [(start, 1, [pytest.approx(v, abs=1e-3)]) for v in later_blocks + [0.0]]
    assert calls == expected
