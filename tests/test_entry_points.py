"""The seeds' training entry points at their own paths (CausVid's causvid/train_ode.py and
causvid/train_distillation.py, writing to the config's output_path) and scripts/make_tiny_wan.py, whose folders
every CLI loads."""
import runpy
import sys
from pathlib import Path

import pytest
import torch

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"


@pytest.mark.parametrize("script, config, dataset", [
    ("causvid/train_ode.py", "wan_causal_ode", "ode4"),
    ("causvid/train_distillation.py", "wan_causal_dmd", "latents"),
])
def test_causvid_entry_points_train_into_output_path(tiny_run_data, tmp_path, monkeypatch, script, config, dataset):
    out = tmp_path / "run"
    data = tiny_run_data
    argv = [str(ROOT / script), "--config_path", str(TINY / f"{config}.yaml"), "--no_visualize",
            f"output_path={out}", f"wan_model_path={data / 'wan'}", f"real_model_path={data / 'wan'}",
            f"data_path={data / dataset}", "generator_ckpt=null", "gradient_checkpointing=false", "max_iters=1",
            "log_iters=1", "dfake_gen_update_ratio=1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:  # the file at the seed's path, run as `python <script>` runs it
        runpy.run_path(str(ROOT / script), run_name="__main__")
    assert exit_.value.code == 0
    checkpoint = torch.load(out / "checkpoint_model_000001" / "model.pt")
    assert "generator" in checkpoint and ("critic" in checkpoint) == ("dmd" in config)
    assert "step 1 generator_loss" in (out / "log.txt").read_text()


@pytest.mark.parametrize("layout", ["wan", "diffusers"])
def test_make_tiny_wan_writes_a_folder_the_cli_loaders_read(tmp_path, layout):
    from causvid.pipelines.text_to_video import load_components
    from causvid.tiny_wan.dit import random_dit

    main = load_script("scripts/make_tiny_wan.py").main
    folder = tmp_path / layout
    assert main([str(folder), "--layout", layout, "--seed", "3"]) == 0
    comp = load_components(folder)
    expected = random_dit("tiny", seed=3).state_dict()
    assert comp.dit.state_dict().keys() == expected.keys()
    assert all(torch.equal(comp.dit.state_dict()[k], expected[k]) for k in expected)  # the seed's weights
    with torch.no_grad():
        latents = comp.vae.encode(torch.zeros(1, 5, 3, 32, 32))
        assert comp.text_encoder.encode(["a red square"]).shape[-1] == comp.dit.config.text_dim
    assert latents.shape[1] == 2
