"""`python -m causvid.export`: each layout read by someone else's loader. diffusers' WanTransformer3DModel reads the
diffusers export; a loader written in this file from the facts of /work/shared/reference/wan.md (the release's
config.json fields and original key names, loaded strictly through diffusers' Wan converter) reads the Wan export;
diffusers' WanPipeline.load_lora_weights reads the LoRA, and a hand-written ComfyUI key map checks its key names."""
import json
import re

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors import safe_open
from safetensors.torch import load_file

from causvid.export import main
from causvid.models.lora import LoRAError, merge_lora
from causvid.models.wan import WanDiT
from causvid.tiny_wan import write_tiny_wan
from causvid.tiny_wan.dit import random_dit, write_wan_dit

H = W = 8  # latents -> 4x4 tokens per frame


def student_of(base: WanDiT, linear_only: bool, seed: int = 1) -> WanDiT:
    """The base with every tensor changed (linear_only: the Linear layers' weights and biases only)."""
    student = random_dit("tiny")
    student.load_state_dict(base.state_dict())
    gen = torch.Generator().manual_seed(seed)
    linear = {n.rsplit(".", 1)[0] for n, p in student.named_parameters() if n.endswith(".weight") and p.dim() == 2}
    with torch.no_grad():
        for name, p in student.named_parameters():
            if not linear_only or name.rsplit(".", 1)[0] in linear:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return student.eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_tiny_wan(root / "wan")
    write_tiny_wan(root / "pipe", layout="diffusers")  # the same seed: the same DiT weights
    base = WanDiT.from_pretrained(root / "wan").eval()
    write_wan_dit(student_of(base, linear_only=False), root / "student")
    write_wan_dit(student_of(base, linear_only=True), root / "student_linear")
    return root


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, 16, H, W, generator=gen), torch.tensor([700.0]), torch.randn(1, 16, 32, generator=gen)


def ours(folder):
    x, t, ctx = inputs()
    with torch.no_grad():
        return WanDiT.from_pretrained(folder).eval()(x, t, ctx)


def theirs(transformer):
    x, t, ctx = inputs()
    with torch.no_grad():
        return transformer.eval()(x.transpose(1, 2), t, ctx).sample.transpose(1, 2)


def export(folders, *args):
    return main(["--wan_model_path", str(folders / "wan"), *map(str, args)])


def test_diffusers_export_is_read_by_diffusers(folders, tmp_path):
    out = tmp_path / "diffusers"
    assert export(folders, "--checkpoint_path", folders / "student", "--to", "diffusers", "--out", out) == 0
    ref = WanTransformer3DModel.from_pretrained(out)
    expected = ours(folders / "student")
    assert (theirs(ref) - expected).abs().max() <= 1e-5
    assert (expected - ours(folders / "wan")).abs().mean() > 1e-2  # the student, not the base
    with safe_open(str(out / "diffusion_pytorch_model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["causvid.export"] == "diffusers"
    assert json.loads(meta["causvid.base_config"])["num_heads"] == 2


# /work/shared/reference/wan.md, section 2: the release's config.json fields and the original key names.
RELEASE_CONFIG_FIELDS = {"_class_name", "_diffusers_version", "dim", "eps", "ffn_dim", "freq_dim", "in_dim",
                         "model_type", "num_heads", "num_layers", "out_dim", "text_len"}


def original_keys(num_layers):
    keys = {"patch_embedding.weight", "patch_embedding.bias", "head.modulation", "head.head.weight", "head.head.bias"}
    keys |= {f"{m}.{i}.{p}" for m in ("text_embedding", "time_embedding") for i in (0, 2) for p in ("weight", "bias")}
    keys |= {"time_projection.1.weight", "time_projection.1.bias"}
    for n in range(num_layers):
        b = f"blocks.{n}"
        keys |= {f"{b}.modulation", f"{b}.norm3.weight", f"{b}.norm3.bias"}
        for attn in ("self_attn", "cross_attn"):
            keys |= {f"{b}.{attn}.{l}.{p}" for l in "qkvo" for p in ("weight", "bias")}
            keys |= {f"{b}.{attn}.norm_q.weight", f"{b}.{attn}.norm_k.weight"}
        keys |= {f"{b}.ffn.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    return keys


def load_original_layout(folder) -> WanTransformer3DModel:
    """A reader of Wan's original folder written from the reference alone: config.json with the release's fields,
    one safetensors in the original key names, loaded strictly through diffusers' Wan converter into the class
    the conversion script configures (qk_norm across heads, affine cross-attention norm)."""
    config = json.loads((folder / "config.json").read_text())
    assert set(config) == RELEASE_CONFIG_FIELDS and config["_class_name"] == "WanModel"
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    assert set(state) == original_keys(config["num_layers"])
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=config["num_heads"],
                                  attention_head_dim=config["dim"] // config["num_heads"], in_channels=config["in_dim"],
                                  out_channels=config["out_dim"], text_dim=state["text_embedding.0.weight"].shape[1],
                                  freq_dim=config["freq_dim"], ffn_dim=config["ffn_dim"], num_layers=config["num_layers"],
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=config["eps"])
    model.load_state_dict(convert_wan_transformer_to_diffusers(state), strict=True)
    return model


def test_wan_export_is_the_original_layout(folders, tmp_path):
    out = tmp_path / "wan_layout"
    assert export(folders, "--checkpoint_path", folders / "student", "--to", "wan", "--out", out) == 0
    assert (theirs(load_original_layout(out)) - ours(folders / "student")).abs().max() <= 1e-5


def test_full_rank_lora_through_diffusers_pipeline(folders, tmp_path, capsys):
    out = tmp_path / "student.safetensors"
    assert export(folders, "--checkpoint_path", folders / "student_linear", "--to", "lora", "--rank", "full",
                  "--out", out) == 0
    pipe = WanPipeline.from_pretrained(folders / "pipe", tokenizer=None, scheduler=None)
    before = theirs(pipe.transformer)
    pipe.load_lora_weights(str(out))
    expected = ours(folders / "student_linear")
    assert (theirs(pipe.transformer) - expected).abs().max() <= 1e-4
    assert (before - expected).abs().max() > 1e-2  # the LoRA did the work
    assert "full" in capsys.readouterr().out


def comfyui_apply(state: dict, lora: dict) -> dict:
    """ComfyUI's LoRA loading as its source describes it (comfy/lora.py, comfy/weight_adapter/lora.py), for a Wan
    model whose state-dict keys are `diffusion_model.` + Wan's names: the generic key map sends
    `diffusion_model.M` (a `.weight` minus its suffix) and `diffusion_model.P` (any other tensor) to the tensor;
    per mapped x it reads `x.lora_up.weight` / `x.lora_down.weight` (+ optional `x.alpha`, scale alpha / rank,
    else 1), `x.diff` (added to the tensor) and `x.diff_b` (added to `M.bias`). Unread keys are returned too."""
    model = {"diffusion_model." + k: v.clone() for k, v in state.items()}
    key_map = {(k[:-len(".weight")] if k.endswith(".weight") else k): k for k in model}
    loaded = set()
    for x, target in key_map.items():
        if f"{x}.lora_up.weight" in lora:
            up, down = lora[f"{x}.lora_up.weight"], lora[f"{x}.lora_down.weight"]
            alpha = lora[f"{x}.alpha"].item() / down.shape[0] if f"{x}.alpha" in lora else 1.0
            model[target] += alpha * (up.flatten(1) @ down.flatten(1)).reshape(model[target].shape)
            loaded |= {f"{x}.lora_up.weight", f"{x}.lora_down.weight", f"{x}.alpha"}
        if f"{x}.diff" in lora:
            model[target] += lora[f"{x}.diff"]
            loaded.add(f"{x}.diff")
        if f"{x}.diff_b" in lora:
            model[target[:-len(".weight")] + ".bias"] += lora[f"{x}.diff_b"]
            loaded.add(f"{x}.diff_b")
    return {k[len("diffusion_model."):]: v for k, v in model.items()}, set(lora) - loaded


def test_lora_keys_are_comfyui_wan_keys_and_carry_every_change(folders, tmp_path, capsys):
    out = tmp_path / "student.safetensors"
    assert export(folders, "--checkpoint_path", folders / "student", "--to", "lora", "--rank", "4,full",
                  "--out", out) == 0
    lora = load_file(tmp_path / "student_rankfull.safetensors")
    assert all(re.match(r"^diffusion_model\.[\w.]+\.(lora_up\.weight|lora_down\.weight|diff|diff_b)$", k) for k in lora)
    base = WanDiT.from_pretrained(folders / "wan").state_dict()
    merged, unread = comfyui_apply(base, lora)
    assert not unread
    student = WanDiT.from_pretrained(folders / "student").state_dict()
    assert all((merged[k] - student[k]).abs().max() <= 1e-5 for k in student)
    assert any(k.endswith("modulation.diff") for k in lora) and "diffusion_model.patch_embedding.diff" in lora
    # the printed table: rank 0 (the base), rank 4 between, full rank exact
    rows = {line.split()[0]: [float(v) for v in line.split()[1:3]] for line in capsys.readouterr().out.splitlines()
            if re.match(r"^\s*(\d+|full)\s", line)}
    assert rows["0"][0] == 1.0 and rows["full"] == [0.0, 0.0] and 0 < rows["4"][1] < rows["0"][1]
    # rank 4 is the best rank-4 approximation of each Linear change (Eckart-Young: the error is the singular values
    # beyond the 4th), the other changes carried exactly
    deltas = {k: student[k] - base[k] for k in base}
    tail = sum(torch.linalg.svdvals(d)[4:].pow(2).sum() for d in deltas.values() if d.dim() == 2)
    best = float(tail.sqrt() / torch.sqrt(sum(d.pow(2).sum() for d in deltas.values())))
    assert abs(rows["4"][0] - best) <= 2e-3 * best


def test_merge_names_a_lora_of_another_size(folders, tmp_path):
    other = random_dit("tiny", dim=96, num_heads=3)
    from causvid.models.lora import lora_tensors, save_lora
    tensors = lora_tensors({"blocks.0.self_attn.q.weight": torch.ones(96, 96)}, other.state_dict(), rank=2)
    save_lora(tmp_path / "big.safetensors", tensors)
    model = WanDiT.from_pretrained(folders / "wan")
    with pytest.raises(LoRAError, match=r"blocks.0.self_attn.q.weight is \[96, 96\] in the LoRA but \[64, 64\]"):
        merge_lora(model, tmp_path / "big.safetensors")


@pytest.mark.parametrize("args, message", [
    (["--to", "lora", "--out", "x.safetensors"], "--to lora needs --checkpoint_path"),
    (["--to", "wan", "--rank", "4", "--out", "x"], "--rank applies to --to lora only"),
    (["--to", "lora", "--rank", "0", "--checkpoint_path", "student", "--out", "x.safetensors"], "--rank 0"),
    (["--to", "wan", "--out", "student"], "exists"),
    (["--to", "lora", "--checkpoint_path", "nothere", "--out", "x.safetensors"], "nothere: no such file"),
])
def test_bad_input_is_one_line(folders, args, message, capsys, monkeypatch):
    from causvid.errors import run_cli
    monkeypatch.chdir(folders)
    assert run_cli(main, ["--wan_model_path", "wan", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (folders / "x.safetensors").exists() and not (folders / "x").exists()


def test_a_lora_runs_adapter_exports_at_its_rank_exactly(folders, tmp_path, capsys):
    """A LoRA training run's folder (its newest checkpoint: the adapter and the `lora` record, config.yaml beside
    it): the student is the base plus the adapter, so the rank-4 export of a rank-4 adapter is exact."""
    from causvid.config import load_config, save_config
    from causvid.training import lora
    from causvid.training.checkpointing import save_checkpoint

    cfg = load_config(None, overrides=["lora.generator.rank=4", "lora.generator.alpha=2",
                                       f"wan_model_path={folders / 'wan'}"])
    model = lora.wrap(WanDiT.from_pretrained(folders / "wan"), cfg, "generator")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.1)
    run = tmp_path / "run"
    save_checkpoint(run, 7, {"generator": lora.adapter_state(model.state_dict())}, {},
                    extra={"lora": {"generator": lora.settings(cfg, "generator")}})
    save_config(cfg, run / "config.yaml")
    out = tmp_path / "adapter.safetensors"
    assert export(folders, "--checkpoint_path", run, "--to", "lora", "--rank", "4", "--out", out) == 0
    rows = {line.split()[0]: [float(v) for v in line.split()[1:3]] for line in capsys.readouterr().out.splitlines()
            if re.match(r"^\s*\d+\s", line)}
    assert rows["4"][0] <= 1e-5 and rows["4"][1] <= 1e-5 and rows["0"][1] > 1e-2
    with safe_open(str(out), "pt") as f:
        assert "lora:" in f.metadata()["causvid.run_config"] and f.metadata()["causvid.rank"] == "4"
        # the file carries the errors the table printed
        assert [float(f.metadata()[f"causvid.{k}_error"]) for k in ("weight", "output")] == pytest.approx(rows["4"],
                                                                                                         abs=1e-8)
    merged = WanDiT.from_pretrained(folders / "wan")
    merge_lora(merged, out)
    x, t, ctx = inputs()
    with torch.no_grad():
        assert (merged(x, t, ctx) - model.eval()(x, t, ctx)).abs().max() <= 1e-5
