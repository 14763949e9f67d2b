"""LoRA training (config `lora.generator` / `lora.critic`, through peft): B = 0 reproduces the base exactly and the
adapter adds (alpha / r) B A x; the gradient reaches the adapters alone (the Self-Forcing rollout's cross-attention
adapters included) and the base never moves; two processes (FSDP2 over gloo) equal one; a crashed run resumes
exactly; checkpoints hold the adapter and name the base, and inference rebuilds the trained student from them."""

import pytest
import torch
from omegaconf import OmegaConf

from causvid.config import ConfigError, load_config
from causvid.errors import UsageError
from causvid.models.wan import WanDiT
from causvid.pipelines.text_to_video import load_dit
from causvid.tiny_wan.dit import random_dit
from causvid.training import distributed as D
from causvid.training import lora
from causvid.training.checkpointing import latest_checkpoint
from causvid.training.trainer import Trainer

from test_training import TINY, after_step, assert_close_states, one_thread_cli, overrides, read_losses, toy_folder
from torchrun_jobs import job

LORA = ["lora.generator.rank=4", "lora.generator.alpha=8", "lora.critic.rank=2"]


def lora_cfg(rank=8, alpha=None, target_modules=("q", "k", "v", "o", "ffn.0", "ffn.2")):
    return OmegaConf.create({"seed": 0, "lora": {"generator": {
        "rank": rank, "alpha": alpha, "dropout": 0.0, "target_modules": list(target_modules)}}})


def test_b_zero_is_the_base_and_the_adapter_adds_its_scaled_product():
    base = random_dit("tiny", seed=3)
    x, t, ctx = torch.randn(1, 2, 16, 8, 8), torch.tensor([400.0]), torch.randn(1, 16, 32)
    with torch.no_grad():
        expected, causal = base(x, t, ctx), base(x, t, ctx, causal=True)
    model = lora.wrap(random_dit("tiny", seed=3), lora_cfg(rank=8, alpha=4), "generator")
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), expected) and torch.equal(model(x, t, ctx, causal=True), causal)
        layer = model.blocks[1].ffn[0]  # h = W0 x + b + (alpha / r) B A x (LoRA, eq. 3)
        layer.lora_B["default"].weight.normal_()
        h = torch.randn(5, 64)
        w0, b = base.blocks[1].ffn[0].weight, base.blocks[1].ffn[0].bias
        a, bb = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert torch.allclose(layer(h), h @ w0.T + b + 0.5 * (h @ a.T) @ bb.T, atol=1e-5)
    with pytest.raises(ConfigError, match="lora.generator.target_modules"):
        lora.wrap(random_dit("tiny"), lora_cfg(target_modules=["nothing_named_so"]), "generator")


def test_gradient_reaches_only_the_adapters_and_the_base_stays(tiny_run_data, tmp_path):
    cfg = load_config(TINY / "causal_forcing_dmd_chunkwise.yaml", overrides=overrides(
        tiny_run_data, "prompts.txt", max_iters=1, dfake_gen_update_ratio=1, lr=1e-3) + LORA)
    t = Trainer(cfg, tmp_path, no_visualize=True, no_save=True)
    bases = {name: WanDiT.from_pretrained(tiny_run_data / "wan").state_dict() for name in ("generator", "critic")}
    t.train()
    for name, model in (("generator", t.models.generator), ("critic", t.models.fake_score)):
        params = dict(model.named_parameters())
        adapters = {k: p for k, p in params.items() if lora.is_adapter(k)}
        assert adapters and all(p.grad is None for k, p in params.items() if k not in adapters)
        # every B (the rollout's cross-attention K/V adapters too) got a gradient and moved off zero
        assert all(p.grad is not None and p.grad.abs().sum() > 0 and p.abs().sum() > 0
                   for k, p in adapters.items() if ".lora_B." in k), name
        state = model.state_dict()  # a wrapped Linear keeps its own weights as base_layer.weight / .bias
        wrapped = {k: f"{k.rsplit('.', 1)[0]}.base_layer.{k.rsplit('.', 1)[1]}" for k in bases[name]}
        assert all(torch.equal(state[wrapped[k] if wrapped[k] in state else k], v) for k, v in bases[name].items())
    assert sum(p.numel() for p in t.optimizers["generator"].param_groups[0]["params"] if p.requires_grad) == \
        sum(p.numel() for k, p in t.models.generator.named_parameters() if lora.is_adapter(k))


def two_processes_common(data):
    return overrides(data, "latents", **toy_folder(data), max_iters=2, ema_weight=0.5, ema_start_step=0,
                     lr=1e-2) + LORA


@job(world=2)
def lora_two_processes(data, root):
    here = root / "lora_two_processes"
    return "train_worker", [TINY / "ar_diffusion_tf_chunkwise.yaml", here / "run", here / "two.pt",
                            *two_processes_common(data), "batch_size=1"]


@pytest.mark.torchrun("lora_two_processes")
def test_two_processes_equal_one(torchrun, tmp_path):
    """Teacher forcing on latents (one model: the DMD stages' adapters are covered above); a high lr, so that the
    keyed init of A (the same in every process) and the adapter's gradient reduction both show."""
    common = two_processes_common(torchrun.data)
    t = Trainer(load_config(TINY / "ar_diffusion_tf_chunkwise.yaml", overrides=common + ["batch_size=2"]),
                tmp_path / "one", no_visualize=True, no_save=True)  # one process: this one
    one = {"history": t.train(), "generator": D.full_model_state(t.models.generator),
           "ema": t.ema.full_state_dict(t.models.generator)}
    two = torch.load(torchrun("lora_two_processes") / "two.pt")
    for (s1, l1), (s2, l2) in zip(one["history"], two["history"]):
        assert s1 == s2 and all(abs(l1[k] - l2[k]) <= 1e-5 * max(1.0, abs(l1[k])) for k in l1)
    assert_close_states(one["generator"], two["generator"])
    assert set(one["ema"]) == {k for k in one["generator"] if lora.is_adapter(k)}  # the EMA averages the adapter
    assert_close_states(one["ema"], two["ema"])


def train_argv(data, logdir):
    return ["--config_path", str(TINY / "ar_diffusion_tf_framewise.yaml"), "--logdir", str(logdir), "--no_visualize",
            "--disable-wandb"] + overrides(data, "latents", max_iters=6, log_iters=2, lr=1e-2, ema_weight=0.5,
                                                ema_start_step=0) + LORA


class Crash(BaseException):
    """A failure no handler in the trainer catches, as a killed process leaves the run: nothing saved after it."""


@pytest.mark.long(10)
def test_crashed_run_resumes_exactly_and_its_checkpoint_is_the_adapter(tiny_run_data, tmp_path, monkeypatch):
    """A LoRA run that dies right after logging step 3 (checkpoints every 2 steps: step 2's is the last on disk;
    train.py killed by SIGKILL is test_training's) resumes from step 2 to the uninterrupted run's losses."""
    reference = tmp_path / "reference"
    assert one_thread_cli(train_argv(tiny_run_data, reference)) == 0
    run = tmp_path / "run"

    def crash():
        raise Crash
    with monkeypatch.context() as patch:
        after_step(patch, 3, crash)
        with pytest.raises(Crash):
            one_thread_cli(train_argv(tiny_run_data, run))
    assert latest_checkpoint(run).name == "checkpoint_model_000002"
    assert one_thread_cli(train_argv(tiny_run_data, run) + ["--resume"]) == 0
    expected, resumed = read_losses(reference), read_losses(run)
    assert sorted(resumed) == list(range(1, 7))
    assert all(resumed[s] == pytest.approx(expected[s], rel=1e-6, abs=1e-9) for s in expected)

    checkpoint = latest_checkpoint(run) / "model.pt"
    saved = torch.load(checkpoint)
    assert set(saved) == {"generator", "generator_ema", "lora"}
    assert all(lora.is_adapter(k) for k in saved["generator"]) and saved["generator"].keys() == saved["generator_ema"].keys()
    assert saved["lora"]["generator"]["rank"] == 4 and saved["lora"]["generator"]["wan_model_path"] == \
        str(tiny_run_data / "wan")
    # inference rebuilds the student: the base it names plus the adapter, scale alpha / r = 2
    student = load_dit(tiny_run_data / "wan", checkpoint).eval()
    wrapped = lora.wrap(WanDiT.from_pretrained(tiny_run_data / "wan"), load_config(
        TINY / "ar_diffusion_tf_framewise.yaml", overrides=LORA), "generator").eval()
    wrapped.load_state_dict({k.removeprefix("model."): v for k, v in saved["generator"].items()}, strict=False)
    x, t, ctx = torch.randn(1, 2, 16, 4, 4), torch.tensor([300.0]), torch.randn(1, 16, 32)
    with torch.no_grad():
        assert (student(x, t, ctx) - wrapped(x, t, ctx)).abs().max() <= 1e-5
        assert (student(x, t, ctx) - WanDiT.from_pretrained(tiny_run_data / "wan")(x, t, ctx)).abs().max() > 1e-3
    # a LoRA trained on a generator_ckpt that has since gone: one line naming it, not the adapter on the wrong base
    saved["lora"]["generator"]["base_checkpoint"] = str(tmp_path / "gone.pt")
    torch.save(saved, tmp_path / "orphan.pt")
    with pytest.raises(UsageError, match=r"gone\.pt, which is not there"):
        load_dit(tiny_run_data / "wan", tmp_path / "orphan.pt")


def test_meta_device_path_fills_the_same_wrapped_model():
    """A model wrapped on the meta device and filled by name from `open_wrapped`'s state (as a sharded loader fills
    each rank's rows) equals the model loaded first and wrapped after."""
    cfg = lora_cfg(rank=4, alpha=8)
    base = random_dit("tiny", seed=5)
    direct = lora.wrap(random_dit("tiny", seed=5), cfg, "generator").state_dict()
    with torch.device("meta"):
        empty = WanDiT(base.config)
    model, state = lora.open_wrapped((empty, dict(base.state_dict())), cfg, "generator")
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state[name])
    assert model.state_dict().keys() == direct.keys()
    assert all(torch.equal(model.state_dict()[k], direct[k]) for k in direct)
