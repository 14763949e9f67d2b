"""The trainer on tiny models and data (CPU): every stage runs, losses fall on a fixed batch, two processes
(FSDP2 over gloo) equal one, accumulation equals a bigger batch, the sharded EMA equals an unsharded one,
Self-Forcing's gradient is the exit step's alone, killed runs resume exactly, bad input fails before a step."""
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from causvid.config import load_config
from causvid.flow import flow_to_x0
from causvid.training import distributed as D
from causvid.training.checkpointing import latest_checkpoint
from causvid.training.stages import DMDStage, Models
from causvid.training.trainer import Trainer, TrainingDiverged
from causvid.tiny_wan.dit import random_dit
from torchrun_jobs import job

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"


def overrides(data, dataset, **kw):
    base = {"wan_model_path": data / "wan", "real_model_path": data / "wan", "data_path": data / dataset,
            "generator_ckpt": "null", "gradient_checkpointing": "false", "log_iters": 1000, **kw}
    return [f"{k}={v}" for k, v in base.items()]


def trainer(data, name, dataset, logdir, **kw):
    cfg = load_config(TINY / f"{name}.yaml", overrides=overrides(data, dataset, **kw))
    return Trainer(cfg, logdir, no_visualize=True, no_save=True)


def losses(history, key="generator_loss"):
    return [logs[key] for _, logs in history if key in logs]


@pytest.mark.parametrize("name,dataset", [
    ("ar_diffusion_tf_chunkwise", "latents"),      # Causal Forcing stage 1: teacher forcing, chunkwise
    ("ar_diffusion_tf_framewise", "latents"),
    ("wan_causal_ode", "ode4"),                    # CausVid ODE layout
    ("causal_ode_chunkwise", "ode6"),              # Causal Forcing ODE layout (TF context)
    ("causal_forcing_dmd_chunkwise", "prompts.txt"),  # Self-Forcing-style rollout DMD
    ("causal_forcing_dmd_framewise_2step", "prompts.txt"),  # first-chunk step list
    ("wan_causal_dmd", "latents"),                 # CausVid-style DMD on noised data latents
    ("wan_bidirectional_dmd", "prompts.txt"),      # bidirectional DMD, backward simulation
])
def test_each_stage_runs_with_finite_losses(tiny_run_data, tmp_path, name, dataset):
    t = trainer(tiny_run_data, name, dataset, tmp_path, max_iters=2, dfake_gen_update_ratio=1)
    history = t.train()
    assert len(history) == 2
    for _, logs in history:
        assert logs and all(math.isfinite(v) for v in logs.values())
    if t.stage.has_critic:
        assert len(losses(history, "critic_loss")) == 2 and len(losses(history)) == 2


@pytest.mark.parametrize("name,dataset", [("ar_diffusion_tf_chunkwise", "latents"),
                                          ("causal_ode_chunkwise", "ode6")])
def test_loss_falls_on_a_fixed_batch(tiny_run_data, tmp_path, name, dataset):
    t = trainer(tiny_run_data, name, dataset, tmp_path, max_iters=12, lr=3e-3, weight_decay=0)
    fixed = t.batch(0, 0)
    loss_fn = t.stage.generator_loss
    t.batch = lambda step, micro, role="generator": fixed
    t.stage.generator_loss = lambda models, batch, step: loss_fn(models, batch, 0)  # same noise, same t
    curve = losses(t.train())
    assert curve[-1] < 0.5 * curve[0], curve


def in_process_worker(args):
    """tests/train_worker.py's run in this process (a group of one, one thread): no interpreter to start."""
    import train_worker

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_worker.main(*map(str, args))
    finally:
        torch.set_num_threads(threads)


def assert_close_states(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= tol, worst


def toy_folder(data):
    """The tiny DiT in a toy folder (conftest.write_tiny_run_data), for the torchrun jobs, the training runs started
    as processes, and their one-process references: its hashed-word text encoder needs no transformers, whose
    umT5 costs each process 4 s of CPU to import. What they test is the distribution (FSDP2, sequence
    parallelism, checkpoints) or the stop and resume, not the text."""
    return {"wan_model_path": data / "toy", "real_model_path": data / "toy"}


def two_processes_common(data):
    return overrides(data, "prompts.txt", **toy_folder(data), max_iters=2, dfake_gen_update_ratio=1, ema_weight=0.5,
                     ema_start_step=0)


@job(world=2)
def two_processes_dmd(data, root):
    here = root / "two_processes_dmd"
    return "train_worker", [TINY / "causal_forcing_dmd_chunkwise.yaml", here / "run", here / "two.pt",
                            *two_processes_common(data), "batch_size=1"]


@pytest.mark.torchrun("two_processes_dmd")
def test_two_processes_equal_one_with_the_same_global_batch(torchrun, tmp_path):
    """FSDP2 over gloo: losses, final generator and the exported EMA match one process (DMD with a critic)."""
    in_process_worker([TINY / "causal_forcing_dmd_chunkwise.yaml", tmp_path / "one", tmp_path / "one.pt",
                       *two_processes_common(torchrun.data), "batch_size=2"])
    one, two = torch.load(tmp_path / "one.pt"), torch.load(torchrun("two_processes_dmd") / "two.pt")
    for (s1, l1), (s2, l2) in zip(one["history"], two["history"]):
        assert s1 == s2 and all(abs(l1[k] - l2[k]) <= 1e-5 * max(1.0, abs(l1[k])) for k in l1)
    assert_close_states(one["generator"], two["generator"])
    assert_close_states(one["ema"], two["ema"])


def test_gradient_accumulation_equals_a_bigger_batch(tiny_run_data, tmp_path):
    runs = {}
    for name, kw in (("batch2", {"batch_size": 2}), ("accum2", {"batch_size": 1, "grad_accum": 2})):
        t = trainer(tiny_run_data, "causal_ode_chunkwise", "ode6", tmp_path / name, max_iters=3, lr=1e-3, **kw)
        runs[name] = (losses(t.train()), D.full_model_state(t.models.generator))
    assert runs["batch2"][0] == pytest.approx(runs["accum2"][0], rel=1e-5)
    assert_close_states(runs["batch2"][1], runs["accum2"][1])


def test_sharded_ema_equals_an_unsharded_ema(tiny_run_data, tmp_path):
    t = trainer(tiny_run_data, "ar_diffusion_tf_framewise", "latents", tmp_path, max_iters=1, lr=1e-3,
                ema_weight=0.7, ema_start_step=1)
    expected = None
    for step in range(4):
        t.cfg.max_iters = step + 1
        t.train()
        weights = {k: v.float().clone() for k, v in D.full_model_state(t.models.generator).items()}
        if step >= 1:  # the EMA starts (as a copy) at ema_start_step, then averages
            expected = weights if expected is None else {k: 0.7 * expected[k] + 0.3 * weights[k] for k in weights}
    assert_close_states(t.ema.full_state_dict(t.models.generator), expected, tol=1e-6)


def test_self_forcing_gradient_comes_from_the_exit_step_alone(tiny_run_data):
    cfg = load_config(TINY / "causal_forcing_dmd_chunkwise.yaml",
                      overrides=["same_step_across_blocks=false", "kv_cache_gradient=detached"])
    stage = DMDStage(cfg)
    model = random_dit("tiny", seed=11, text_len=16)
    context = torch.randn(1, 16, 32)
    batch = {"samples": [3], "context": context}
    step = 5
    calls = []
    forward = model.forward

    def recording(x, t, ctx, **kw):
        calls.append((x.detach().clone(), t.clone(), kw.get("start_frame")))
        return forward(x, t, ctx, **kw)

    model.forward = recording
    weights = torch.randn(1, 6, 16, 4, 4)
    (stage.generate(Models(model), batch, step) * weights).sum().backward()
    rollout_grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.forward = forward
    model.zero_grad()

    # by hand: for each block only its exit call with gradient (the last call before the refresh at t = 0),
    # the refreshed block written into a detached cache without gradient
    blocks = {}
    for x, t, start in calls:
        blocks.setdefault(start, []).append((x, t))
    cache, outputs = model.new_cache(1, max_frames=6, gradient="detached"), []
    for start in sorted(blocks):
        (x_exit, t_exit), (clean, t_ctx) = blocks[start][-2], blocks[start][-1]
        flow = model(x_exit, t_exit, context, cache=cache, start_frame=start)
        outputs.append(flow_to_x0(flow, x_exit, t_exit, stage.grid))
        with torch.no_grad():
            model(clean, t_ctx, context, cache=cache, start_frame=start)
    (torch.cat(outputs, dim=1) * weights).sum().backward()
    exits = [len(v) - 1 for v in blocks.values()]
    assert len(set(exits)) > 1 or max(exits) > 1  # some block exits after several steps: the test has teeth
    assert sum(g is not None for g in rollout_grads) > len(rollout_grads) // 2
    for a, p in zip(rollout_grads, model.parameters()):
        assert (a is None) == (p.grad is None)
        assert a is None or torch.allclose(a, p.grad, atol=1e-5, rtol=1e-4)



def test_self_forcing_rollout_runs_each_blocks_own_steps():
    """A per-block schedule in DMD training: block 0 runs the leading list (4 steps), block 1 the main list (2),
    each followed by the refresh; with last_step_only every step runs, so the calls are the lists themselves."""
    from causvid.config import leading_block_steps

    cfg = load_config(TINY / "causal_forcing_dmd_chunkwise.yaml",
                      overrides=["denoising_step_list_per_block=[[1000,750,500,250]]", "denoising_step_list=[1000,500]",
                                 "last_step_only=true", "kv_cache_gradient=detached"])
    stage = DMDStage(cfg)
    model = random_dit("tiny", seed=11, text_len=16)
    calls = []
    forward = model.forward

    def recording(x, t, ctx, **kw):
        calls.append((kw.get("start_frame"), round(float(t.flatten()[0]), 3)))
        return forward(x, t, ctx, **kw)

    model.forward = recording
    with torch.no_grad():
        stage.generate(Models(model), {"samples": [3], "context": torch.randn(1, 16, 32)}, 5)
    (lead,) = leading_block_steps(cfg)
    refresh = round(float(cfg.context_noise), 3)
    assert calls == [(0, round(s, 3)) for s in lead] + [(0, refresh)] + \
        [(3, round(s, 3)) for s in stage.steps] + [(3, refresh)]
    assert len(lead) == 4 and len(stage.steps) == 2

def read_losses(logdir):
    out = {}
    for line in (Path(logdir) / "log.txt").read_text().splitlines():
        m = re.match(r"step (\d+) generator_loss (\S+)", line)
        if m:
            out[int(m.group(1))] = float(m.group(2))
    return out


def train_argv(tiny_run_data, logdir):
    """The stopped-run tests' training: the SIGKILL one runs it as a process, so from the toy folder."""
    return ["--config_path", str(TINY / "ar_diffusion_tf_framewise.yaml"), "--logdir", str(logdir), "--no_visualize",
            "--disable-wandb"] + overrides(tiny_run_data, "latents", **toy_folder(tiny_run_data), max_iters=8,
                                           log_iters=2, lr=1e-3)


def one_thread_cli(argv):
    """The training CLI in this process with one torch thread, as the OMP_NUM_THREADS=1 subprocesses run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cli(argv)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_losses(tiny_run_data, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("reference")
    assert one_thread_cli(train_argv(tiny_run_data, logdir)) == 0
    losses = read_losses(logdir)
    assert sorted(losses) == list(range(1, 9))
    return losses


def after_step(monkeypatch, step, act):
    """Call `act()` right after the trainer logs `step` (as tests/stop_at_step.py does in train.py): a known
    step, no clock."""
    log = Trainer._log

    def log_then_act(self, logs):
        log(self, logs)
        if self.step == step:
            act()
    monkeypatch.setattr(Trainer, "_log", log_then_act)


def signal_after_step(monkeypatch, step, sig):
    """This process sends itself `sig` after `step`; the trainer's handler (installed for the loop) takes it."""
    after_step(monkeypatch, step, lambda: os.kill(os.getpid(), getattr(signal, sig)))


@pytest.mark.long(12)
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_stopped_run_resumes_exactly_and_its_log_reads_as_one_run(tiny_run_data, reference_losses, tmp_path, sig,
                                                                  capsys, monkeypatch):
    """The run gets `sig` right after logging step 3. SIGTERM and Ctrl-C finish the step, save it and stop
    (Ctrl-C: exit 130 and one line); these run the training CLI in this process, which takes the signal through
    the trainer's handler. SIGKILL leaves step 2's checkpoint; it kills train.py, run as a process of its own
    (tests/stop_at_step.py). --resume (with the config and overrides again, or `--resume RUN_FOLDER` alone) then
    reproduces the uninterrupted run's losses, and log.txt holds steps 1..8 once."""
    run = tmp_path / "run"
    if sig == "SIGKILL":
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "stop_at_step.py"), "3", sig,
                               str(ROOT / "train.py"), *train_argv(tiny_run_data, run)], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
    else:
        handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
        with monkeypatch.context() as patch:
            signal_after_step(patch, 3, sig)
            code = one_thread_cli(train_argv(tiny_run_data, run))
        err = capsys.readouterr().err
        assert code == {"SIGTERM": 0, "SIGINT": 130}[sig] and "Traceback" not in err, err[-3000:]
        if sig == "SIGINT":
            assert err.strip().splitlines()[-1] == (f"interrupted (Ctrl-C) after step 3: saved step 3 in {run}; "
                                                    f"continue with --resume {run}")
        assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == handlers  # given back
    assert latest_checkpoint(run).name == ("checkpoint_model_000002" if sig == "SIGKILL" else "checkpoint_model_000003")
    if sig == "SIGKILL":  # the seeds' form: the config and overrides again, and --resume
        assert one_thread_cli(train_argv(tiny_run_data, run) + ["--resume"]) == 0
    else:  # the run folder alone: its saved config.yaml holds the config and the overrides; a new one is logged
        capsys.readouterr()
        assert one_thread_cli(["--resume", str(run), "--no_visualize", "--disable-wandb", "keep_last_n=100"]) == 0
        assert "resume: override keep_last_n=100 (was None)" in capsys.readouterr().out
    steps = [int(m.group(1)) for line in (run / "log.txt").read_text().splitlines()
             if (m := re.match(r"step (\d+) ", line))]
    assert steps == list(range(1, 9))  # the steps redone after the resume are not logged twice
    resumed = read_losses(run)
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(reference_losses[step], rel=1e-6, abs=1e-9), step


def test_keep_last_n_checkpoints(tiny_run_data, tmp_path):
    from causvid.config import ConfigError

    cfg = load_config(TINY / "causal_ode_chunkwise.yaml", overrides=overrides(
        tiny_run_data, "ode6", max_iters=3, log_iters=1, keep_last_n=2))
    Trainer(cfg, tmp_path, no_visualize=True).train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint_model_*")) == ["checkpoint_model_000002",
                                                                         "checkpoint_model_000003"]
    with pytest.raises(ConfigError, match="keep_last_n=0"):
        load_config(TINY / "causal_ode_chunkwise.yaml", overrides=["keep_last_n=0"])


def cli(argv):
    from causvid.training.cli import main
    return main(argv)


def test_clear_errors_before_any_step(tiny_run_data, tmp_path, capsys):
    config = str(TINY / "causal_ode_chunkwise.yaml")
    base = ["--config_path", config, "--logdir", str(tmp_path), "--disable-wandb"]
    assert cli(base + overrides(tiny_run_data, "ode6") + ["num_frame_per_blok=3"]) == 2
    assert "did you mean 'num_frame_per_block'" in capsys.readouterr().err
    assert cli(base + overrides(tiny_run_data, "ode6", generator_ckpt=tmp_path / "missing.pt")) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert cli(base + overrides(tiny_run_data, "no_such_lmdb")) == 2
    assert "no_such_lmdb" in capsys.readouterr().err
    assert not (tmp_path / "log.txt").exists()  # nothing ran


def test_non_finite_loss_stops_naming_the_step(tiny_run_data, tmp_path):
    t = trainer(tiny_run_data, "causal_ode_chunkwise", "ode6", tmp_path, max_iters=5)
    original = t.stage.generator_loss
    t.stage.generator_loss = lambda m, b, s: original(m, b, s) * (float("nan") if s == 2 else 1.0)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 2"):
        t.train()
    assert t.step == 2  # steps 0 and 1 done; the weights never saw step 2's gradient


def test_checkpoint_is_the_published_layout_and_samples_are_written(tiny_run_data, tmp_path):
    from causvid.models.wan import WanDiT

    cfg = load_config(TINY / "causal_ode_chunkwise.yaml", overrides=overrides(
        tiny_run_data, "ode6", max_iters=2, log_iters=1, ema_weight=0.5, ema_start_step=0))
    t = Trainer(cfg, tmp_path, no_visualize=False)
    t.train()
    weights = D.full_model_state(t.models.generator)
    ema = t.ema.full_state_dict(t.models.generator)
    exported = tmp_path / "checkpoint_model_000002" / "model.pt"
    assert sorted(torch.load(exported)) == ["generator", "generator_ema"]
    sizes = dict(num_heads=2, text_len=16)
    for use_ema, expected in ((False, weights), (True, ema)):
        loaded = WanDiT.from_pretrained(exported, use_ema=use_ema, **sizes).state_dict()
        assert all(torch.equal(loaded[k], expected[k].float()) for k in expected)
    from causvid.video_io import video_info
    assert video_info(tmp_path / "samples" / "step_000002.mp4")[:3] == (21, 32, 32)  # 6 latent frames decoded
    assert "step 2 generator_loss" in (tmp_path / "log.txt").read_text()


def test_diffusion_loss_weighting_bump_or_uniform(tiny_run_data, tmp_path):
    """Self-Forcing's bump gives the noisiest level no weight: fine for fine-tuning Wan, but a model trained from
    scratch with it never learns to start sampling. "uniform" weighs every level alike; other values fail."""
    from causvid.config import ConfigError

    with pytest.raises(ConfigError, match="diffusion_loss_weighting='flat'"):
        trainer(tiny_run_data, "ar_diffusion_tf_chunkwise", "latents", tmp_path, diffusion_loss_weighting="flat")
    loss = {}
    for weighting in ("bump", "uniform"):
        t = trainer(tiny_run_data, "ar_diffusion_tf_chunkwise", "latents", tmp_path,
                    diffusion_loss_weighting=weighting)
        t.stage.timesteps = torch.full_like(t.stage.timesteps, 999.0)  # every frame at the noisiest level
        with torch.no_grad():
            loss[weighting] = t.stage.generator_loss(t.models, t.batch(0, 0), 0).item()
    # the same draws: the bump loss is the uniform one times the weight of t = 999, written out here
    import numpy as np
    u = np.linspace(1.0, 0.0, 1001)[:-1]
    grid = 1000 * 5 * u / (1 + 4 * u)
    bump = np.exp(-2 * ((grid - 500) / 1000) ** 2)
    w999 = ((bump - bump.min()) / (bump - bump.min()).mean())[np.abs(grid - 999).argmin()]
    assert loss["uniform"] > 0.1 and w999 < 0.01
    assert loss["bump"] == pytest.approx(w999 * loss["uniform"], rel=1e-4)


SHARDED = TINY / "causal_ode_chunkwise.yaml"


def sharded_common(data):
    return overrides(data, "ode6", **toy_folder(data), ema_weight=0.5, ema_start_step=0, log_iters=2, lr=1e-3,
                     checkpoint_format="sharded")


@job(world=2)
def sharded_saved_by_two(data, root):
    here = root / "sharded_saved_by_two"
    return "train_worker", [SHARDED, here / "run", here / "two.pt", *sharded_common(data), "max_iters=2",
                            "batch_size=2"]


@job(world=4)
def sharded_resumed_on_four(data, root):
    here = root / "sharded_resumed_on_four"
    return "train_worker", [SHARDED, here / "run", here / "resumed.pt", *sharded_common(data), "max_iters=4",
                            "batch_size=1"], {"copy": (root / "sharded_saved_by_two" / "run", here / "run")}


@pytest.mark.torchrun("sharded_saved_by_two", "sharded_resumed_on_four")
def test_sharded_checkpoint_saved_by_two_processes_resumes_on_one_and_on_four(torchrun, tmp_path):
    """checkpoint_format=sharded (torch.distributed.checkpoint): a run saved at step 2 by 2 processes resumes on
    1 and on 4 (same global batch) with the uninterrupted run's losses, weights and EMA; its generator loads
    as a checkpoint (what the export reads). The 2- and 4-process runs are tests/torchrun_jobs.py jobs above."""
    import shutil

    from causvid.pipelines.text_to_video import load_dit

    common = sharded_common(torchrun.data)
    in_process_worker([SHARDED, tmp_path / "reference", tmp_path / "reference.pt", *common, "max_iters=4",
                       "batch_size=4"])
    two = torchrun("sharded_saved_by_two")
    saved = two / "run" / "checkpoint_model_000002"
    assert (saved / "sharded" / ".metadata").exists() and not (saved / "model.pt").exists()
    reference = torch.load(tmp_path / "reference.pt")
    shutil.copytree(two / "run", tmp_path / "resumed1")  # one process: this one
    in_process_worker([SHARDED, tmp_path / "resumed1", tmp_path / "resumed1.pt", *common, "max_iters=4",
                       "batch_size=4"])
    for dump in (tmp_path / "resumed1.pt", torchrun("sharded_resumed_on_four") / "resumed.pt"):
        resumed = torch.load(dump)
        assert [s for s, _ in resumed["history"]] == [3, 4]
        for (_, expected), (_, got) in zip(reference["history"][2:], resumed["history"]):
            assert got["generator_loss"] == pytest.approx(expected["generator_loss"], rel=1e-5)
        assert_close_states(reference["generator"], resumed["generator"])
        assert_close_states(reference["ema"], resumed["ema"])
    dit = load_dit(torchrun.data / "toy", saved)
    assert_close_states({k: v for k, v in dit.state_dict().items()}, torch.load(two / "two.pt")["generator"], tol=0)


def test_the_readmes_toy_training_commands_run_as_pasted(tmp_path, monkeypatch, capsys):
    """The commands that open the README's "Training" section, as pasted (run folder moved to tmp_path, fewer steps
    appended as a later override): the toy stage trains, then `--resume RUN_FOLDER` alone continues it."""
    import shlex

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("\n## Training\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(c) for c in block.replace("\\\n", " ").splitlines() if c.startswith("python train.py")]
    assert len(commands) == 2 and commands[1][2:4] == ["--resume", commands[0][commands[0].index("--logdir") + 1]]
    run = str(tmp_path / "toy_dmd")
    first, second = ([run if a == commands[0][commands[0].index("--logdir") + 1] else a for a in c[2:]]
                     for c in commands)
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the repository root
    assert one_thread_cli(first + ["max_iters=2", "log_iters=2"]) == 0
    assert one_thread_cli(second + ["max_iters=3"]) == 0
    out = capsys.readouterr().out
    assert "resume: override max_iters=3 (was 2)" in out and "resumed from" in out and "done: 1 step in" in out
    assert (tmp_path / "toy_dmd" / "checkpoint_model_000003" / "model.pt").is_file()
