"""Sequence parallelism (causvid/models/wan/sequence_parallel.py) on CPU with gloo: a tiny DiT split over 2 and 4
ranks (and over 2 x 2 with FSDP on the other mesh dim) gives the one-process outputs, losses and gradients in
every attention mode, and `train.py` under torchrun with sequence_parallel_size=2 logs the one-process losses."""
import re
from pathlib import Path

import pytest
import torch

import sp_worker
from causvid.training.cli import main as train_py
from test_training import toy_folder
from torchrun_jobs import job

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5  # relative to the largest magnitude of each compared tensor


def worst(a, b):
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)


@pytest.fixture(scope="module")
def reference():
    """The same forwards and backwards in one process, without sequence parallelism."""
    model, inputs = sp_worker.make_model(), sp_worker.make_inputs()
    return {mode: sp_worker.run(model, mode, inputs, list(range(sp_worker.BATCH))) for mode in sp_worker.MODES}


@job(world=4)
def sp_split_dit(data, root):
    return "sp_worker", [root / "sp_split_dit", 4, 2]


@pytest.mark.torchrun("sp_split_dit")
def test_split_dit_equals_one_process(reference, torchrun):
    """One world of 4 ranks (tests/sp_worker.py): sp 4 (6 tokens per frame padded to 4 pieces of 2), then two groups
    of sp 2 (each a world-2 split, 3 tokens per rank and frame) with FSDP2 over the other mesh dim, one sample per
    group."""
    world, sizes, out = 4, [4, 2], torchrun("sp_split_dit")
    for sp in sizes:
        ranks = [torch.load(out / f"sp{sp}_rank{r}.pt") for r in range(world)]
        for mode, ref in reference.items():
            for rank in ranks:
                got, samples = rank["results"][mode], rank["samples"]
                assert abs(got["loss"] - ref["loss"]) <= TOL * abs(ref["loss"]), (sp, mode)
                assert worst(got["out"], ref["out"][samples]) <= TOL, (sp, mode)
                assert got["inputs"].keys() == ref["inputs"].keys() == {"x", "clean", "context"} - (
                    set() if mode == "teacher_forcing" else {"clean"})
                for name, grad in ref["inputs"].items():
                    assert worst(got["inputs"][name], grad[samples]) <= TOL, (sp, mode, name)
                for name, grad in ref["params"].items():
                    assert worst(got["params"][name], grad) <= TOL, (sp, mode, name)


def sp_train_args(data):
    """Self-Forcing DMD (KV-cached rollout with activation checkpointing, critic, real score); a learning rate
    large enough that a wrong gradient shows in the later steps' losses. The tiny DiT in a toy folder, as every
    torchrun job (test_training.toy_folder)."""
    return ["--config_path", ROOT / "configs" / "tiny" / "self_forcing_dmd.yaml", "--no_save", "--no_visualize",
            "--disable-wandb", *(f"{k}={v}" for k, v in toy_folder(data).items()), f"data_path={data / 'prompts.txt'}",
            "generator_ckpt=null", "max_iters=3", "dfake_gen_update_ratio=1", "lr=1e-3", "lr_critic=1e-3",
            "log_iters=1000"]


@job(world=2)
def sp_train_py(data, root):
    return "train_py", ["--logdir", root / "sp_train_py" / "sp2", *sp_train_args(data), "sequence_parallel_size=2"]


@pytest.mark.torchrun("sp_train_py")
def test_train_py_with_sequence_parallel_logs_the_one_process_losses(torchrun, tmp_path):
    """train.py's losses with sequence_parallel_size=2 on 2 processes (sp_train_args) and on one."""
    assert train_py([str(a) for a in ["--logdir", tmp_path / "one", *sp_train_args(torchrun.data)]]) == 0

    def losses(run):
        return [float(v) for v in re.findall(r"_loss (\S+)", (run / "log.txt").read_text())]

    one, sp2 = losses(tmp_path / "one"), losses(torchrun("sp_train_py") / "sp2")
    assert len(one) == 6 and one[0] != one[-2]
    assert sp2 == pytest.approx(one, rel=TOL, abs=1e-6)


def test_sequence_parallel_size_must_divide_processes_and_heads(tiny_run_data, tmp_path, capsys):
    data = tiny_run_data
    base = ["--config_path", str(ROOT / "configs" / "tiny" / "self_forcing_dmd.yaml"), "--logdir", str(tmp_path),
            f"wan_model_path={data / 'wan'}", f"real_model_path={data / 'wan'}", f"data_path={data / 'prompts.txt'}",
            "generator_ckpt=null", "max_iters=1"]
    assert train_py(base + ["sequence_parallel_size=2"]) == 2  # one process
    assert "sequence_parallel_size=2 must be a positive divisor of the number of processes (1)" in \
        capsys.readouterr().err


def test_heads_must_divide_by_the_group(monkeypatch):
    import torch.distributed as dist
    from causvid.models.wan.sequence_parallel import SequenceParallel

    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 3)  # a group of 3: only its size is asked
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    with pytest.raises(ValueError, match="sequence_parallel_size=3 does not divide num_heads=2"):
        SequenceParallel(None, num_heads=2)
