"""`--lora PATH[:SCALE]` on the inference CLIs: LoRA files in diffusers', ComfyUI's (with alpha, .diff) and
musubi-tuner's key formats, written here by hand, are merged once into the DiT's weights; diffusers' own
WanPipeline.load_lora_weights is the reference for reading diffusers' format; bad LoRAs give one line."""
from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline
from safetensors.torch import save_file

from causvid.errors import run_cli
from causvid.models.wan import WanDiT
from causvid.pipelines.cli import build_generator, prompt_file_main, prompt_file_parser
from causvid.tiny_wan import write_tiny_wan
from causvid.tiny_wan.dit import random_dit

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "wan_causal_dmd.yaml"


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    write_tiny_wan(root / "pipe", layout="diffusers")
    (root / "prompts.txt").write_text("a red square moving left\n")
    return root


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


def diffusers_lora(path):
    """diffusers' key names (reference: the rename table of wan.md, section 2) -> the Wan tensors they change."""
    a, b, c, d, e, f = rand(2, 64, seed=1), rand(64, 2, seed=2), rand(3, 64, seed=3), rand(128, 3, seed=4), \
        rand(2, 64, seed=5), rand(64, 2, seed=6)
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": a, "transformer.blocks.0.attn1.to_q.lora_B.weight": b,
               "transformer.blocks.1.ffn.net.0.proj.lora_A.weight": c,
               "transformer.blocks.1.ffn.net.0.proj.lora_B.weight": d,
               "transformer.blocks.1.attn2.to_out.0.lora_A.weight": e,
               "transformer.blocks.1.attn2.to_out.0.lora_B.weight": f}, str(path))
    return {"blocks.0.self_attn.q.weight": b @ a, "blocks.1.ffn.0.weight": d @ c, "blocks.1.cross_attn.o.weight": f @ e}


def comfy_and_musubi_lora(path):
    """Kijai / ComfyUI keys with alpha (scale alpha / rank), a .diff and a .diff_b, and one musubi-tuner key."""
    down, up, mod, bias = rand(4, 64, seed=7), rand(64, 4, seed=8), rand(1, 6, 64, seed=9), rand(64, seed=10)
    mdown, mup = rand(2, 128, seed=11), rand(64, 2, seed=12)
    save_file({"diffusion_model.blocks.0.cross_attn.k.lora_down.weight": down,
               "diffusion_model.blocks.0.cross_attn.k.lora_up.weight": up,
               "diffusion_model.blocks.0.cross_attn.k.alpha": torch.tensor(2.0),
               "diffusion_model.blocks.1.modulation.diff": mod, "diffusion_model.blocks.0.ffn.2.diff_b": bias,
               "lora_unet_blocks_1_ffn_2.lora_down.weight": mdown, "lora_unet_blocks_1_ffn_2.lora_up.weight": mup},
              str(path))
    return {"blocks.0.cross_attn.k.weight": up @ down * 0.5, "blocks.1.modulation": mod,
            "blocks.0.ffn.2.bias": bias, "blocks.1.ffn.2.weight": mup @ mdown}


def generator(wan, *lora):
    args = prompt_file_parser("t").parse_args(
        ["--config_path", str(CONFIG), "--output_folder", str(wan / "out"), "--wan_model_path", str(wan / "pipe"),
         "--prompt_file_path", str(wan / "prompts.txt"), *[a for spec in lora for a in ("--lora", spec)]])
    return build_generator(args)


def test_loras_of_every_format_are_merged_with_their_scales(wan, capsys):
    d, c = diffusers_lora(wan / "d.safetensors"), comfy_and_musubi_lora(wan / "c.safetensors")
    base = WanDiT.from_pretrained(wan / "pipe").state_dict()
    merged = generator(wan, f"{wan / 'd.safetensors'}:0.5", str(wan / "c.safetensors")).components.dit.state_dict()
    expected = dict(base)
    for name, delta in d.items():
        expected[name] = expected[name] + 0.5 * delta
    for name, delta in c.items():
        expected[name] = expected[name] + delta
    assert all((merged[k] - expected[k]).abs().max() <= 1e-6 for k in base)
    assert sum(not torch.equal(merged[k], base[k]) for k in base) == len(d) + len(c)
    assert "merged LoRA" in capsys.readouterr().out


def test_diffusers_format_merge_equals_diffusers_own_loader(wan):
    diffusers_lora(wan / "d.safetensors")
    pipe = WanPipeline.from_pretrained(wan / "pipe", tokenizer=None, scheduler=None)
    pipe.load_lora_weights(str(wan / "d.safetensors"))
    ours = generator(wan, str(wan / "d.safetensors")).components.dit
    gen = torch.Generator().manual_seed(0)
    # a context as long as the model's text_len (512: a diffusers folder does not say): Wan pads shorter ones, the
    # diffusers pipeline pads before its transformer
    x, t, ctx = torch.randn(1, 2, 16, 8, 8, generator=gen), torch.tensor([600.0]), torch.randn(1, 512, 32, generator=gen)
    with torch.no_grad():
        theirs = pipe.transformer(x.transpose(1, 2), t, ctx).sample.transpose(1, 2)
        assert (ours(x, t, ctx) - theirs).abs().max() <= 1e-5


def test_bad_loras_are_one_line(wan, tmp_path, capsys):
    from causvid.models.lora import lora_tensors, save_lora
    other = random_dit("tiny", dim=96, num_heads=3)
    save_lora(tmp_path / "big.safetensors",
              lora_tensors({"blocks.0.self_attn.q.weight": torch.ones(96, 96)}, other.state_dict(), rank=2))
    empty = tmp_path / "empty_wan"
    empty.mkdir()
    common = ["--config_path", str(CONFIG), "--output_folder", str(tmp_path / "out"),
              "--prompt_file_path", str(wan / "prompts.txt")]
    cases = [  # the missing file is found before any model loads: the Wan folder there is empty
        (["--wan_model_path", str(empty), "--lora", str(tmp_path / "none.safetensors:0.7")], "no such file"),
        (["--wan_model_path", str(wan / "pipe"), "--lora", str(tmp_path / "big.safetensors")],
         "is [96, 96] in the LoRA but [64, 64] in the model"),
    ]
    for argv, needle in cases:
        assert run_cli(lambda a: prompt_file_main(a, True, "t"), common + argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not any((tmp_path / "out").glob("*.mp4"))
