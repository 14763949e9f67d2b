"""The config schema, the shipped configs (real and tiny) and the derived step lists."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from causvid.config import (
    Config, ConfigError, denoising_steps, generator_is_causal, leading_block_steps, guidance_scale, ignored_values,
    load_config, real_score_path, save_config, trainer_name, warp_shift,
)
from causvid.flow import WAN_NEGATIVE_PROMPT

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
NAMES = [
    # CausVid
    "wan_causal_dmd", "wan_causal_dmd_warp_4step_cfg2", "wan_causal_ode", "wan_bidirectional_dmd",
    "wan_bidirectional_dmd_from_scratch",
    # Self-Forcing
    "self_forcing_dmd",
    # ours: Self-Forcing's recipe with a 14B student (sequence parallel, sharded checkpoints, offload)
    "self_forcing_dmd_14b",
    # Causal-Forcing
    "ar_diffusion_tf_framewise", "ar_diffusion_tf_chunkwise", "causal_ode_framewise", "causal_ode_chunkwise",
    "causal_forcing_dmd_framewise", "causal_forcing_dmd_chunkwise", "causal_forcing_dmd_framewise_1step",
    "causal_forcing_dmd_framewise_2step", "causal_cd_framewise", "causal_cd_chunkwise",
]
# What the tiny mirrors may change or add relative to the real files (a tiny run is one process: no sequence
# parallel group).
TINY_CHANGED = {"wan_model_path", "image_or_video_shape", "num_training_frames", "batch_size", "log_iters",
                "ema_start_step", "total_batch_size", "data_path", "output_path", "generator_ckpt",
                "sequence_parallel_size"}


def _write(tmp_path, text, name="x.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _raw(path):
    return OmegaConf.to_container(OmegaConf.load(path))


# ---------------------------------------------------------------------------------------------------------------
# Shipped configs


def test_shipped_config_sets():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(NAMES)
    assert sorted(p.stem for p in (CONFIGS / "tiny").glob("*.yaml")) == sorted(NAMES)


ALL_FILES = [CONFIGS / f"{n}.yaml" for n in NAMES] + [CONFIGS / "tiny" / f"{n}.yaml" for n in NAMES]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_config_loads(path):
    cfg = load_config(path)
    # every key of the file made it through unchanged (modulo int -> float in float fields)
    for key, value in _raw(path).items():
        got = OmegaConf.to_container(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key]
        if isinstance(value, dict):
            assert {k: got[k] for k in value} == value
        elif key == "guidance_scale" and "real_guidance_scale" not in _raw(path) and cfg.real_guidance_scale:
            assert (got, cfg.real_guidance_scale) == (value + 1, value)  # a DMD file's scale, read in one form
        else:
            assert got == value, key
    # the derived settings, from the file by hand: steps without a trailing 0, warped on the shifted grid
    # (sigma -> shift * sigma / (1 + (shift - 1) * sigma)); the trainer named, or CausVid's loss's; the real score
    # in wan_models/<real_name> as Self-Forcing / Causal Forcing load it (the 1.3B base when none is named)
    raw = _raw(path)
    shift = (raw.get("model_kwargs") or {}).get("timestep_shift", raw.get("timestep_shift"))
    first = lambda cfg: (leading_block_steps(cfg) or [None])[0]  # noqa: E731  (block 0's own list)
    for key, derived in (("denoising_step_list", denoising_steps), ("denoising_step_list_first_chunk", first)):
        steps = raw.get(key)
        if steps is None:
            assert derived(cfg) is None, key
            continue
        steps = [t / 1000 for t in (steps[:-1] if steps[-1] == 0 else steps)]
        if raw.get("warp_denoising_step"):
            steps = [shift * s / (1 + (shift - 1) * s) for s in steps]
        assert derived(cfg) == pytest.approx([1000 * s for s in steps], abs=1e-3), key
    assert trainer_name(cfg) == raw.get("trainer") or {"dmd": "score_distillation", "ode": "ode"}[
        raw["distillation_loss"]]
    real = raw.get("real_name", "Wan2.1-T2V-1.3B")
    if path.parent == CONFIGS:
        assert real_score_path(cfg) == f"wan_models/{real}"
    else:
        assert Path(real_score_path(cfg)).name in ({real} if real != "Wan2.1-T2V-1.3B" else {real, "wan"})


@pytest.mark.parametrize("name", NAMES)
def test_tiny_mirrors_real(name):
    real, tiny = _raw(CONFIGS / f"{name}.yaml"), _raw(CONFIGS / "tiny" / f"{name}.yaml")
    assert set(real) <= set(tiny) and set(tiny) - set(real) <= TINY_CHANGED
    for key in set(real) - TINY_CHANGED:
        assert tiny[key] == real[key], key
    cfg = load_config(CONFIGS / "tiny" / f"{name}.yaml")
    frames = 4 if "framewise" in name else 6
    assert list(cfg.image_or_video_shape) == [1, frames, 16, 4, 4]
    assert cfg.num_training_frames == frames and cfg.batch_size == 1 and cfg.log_iters <= 10
    assert cfg.wan_model_path == "runs/tiny/wan"
    for key in ("data_path", "output_path", "generator_ckpt"):
        assert cfg[key] is None or cfg[key].startswith("runs/tiny/"), key
    header = (CONFIGS / "tiny" / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith(f"# Tiny CPU mirror of configs/{name}.yaml")


def test_real_values():
    cv = load_config(CONFIGS / "wan_causal_dmd.yaml")
    assert (cv.model_name, cv.generator_name, cv.num_frame_per_block) == ("wan", "causal_wan", 3)
    assert cv.real_guidance_scale == 3.5 and cv.timestep_shift == 8.0 and cv.backward_simulation is False
    assert dict(cv.real_score_grad) == {"model": False} and cv.negative_prompt == WAN_NEGATIVE_PROMPT
    assert load_config(CONFIGS / "wan_causal_ode.yaml").batch_size == 2
    assert load_config(CONFIGS / "wan_bidirectional_dmd.yaml").backward_simulation is True  # absent -> default

    sf = load_config(CONFIGS / "self_forcing_dmd.yaml")
    assert (sf.lr, sf.lr_critic, sf.beta1, sf.ema_weight, sf.ema_start_step) == (2e-6, 4e-7, 0.0, 0.99, 200)
    assert sf.real_name == "Wan2.1-T2V-14B" and sf.model_kwargs.timestep_shift == 5.0
    assert (sf.total_batch_size, sf.log_iters, sf.trainer) == (64, 50, "score_distillation")

    cf = load_config(CONFIGS / "causal_cd_chunkwise.yaml")
    assert (cf.trainer, cf.discrete_cd_N, cf.spatial_sf, cf.is_causal, cf.grad_accum) == \
        ("consistency_distillation", 48, True, True, 1)
    ar = load_config(CONFIGS / "ar_diffusion_tf_framewise.yaml")
    assert ar.teacher_forcing and ar.num_frame_per_block == 1 and ar.denoising_step_list is None
    assert ar.ema_start_step == 2000000000 and ar.wandb_key == "{your key}"
    one = load_config(CONFIGS / "causal_forcing_dmd_framewise_1step.yaml")
    assert list(one.denoising_step_list) == [1000]
    assert list(one.denoising_step_list_first_chunk) == [1000, 750, 500, 250]


def test_resolvers():
    cv = load_config(CONFIGS / "wan_bidirectional_dmd.yaml")
    assert not generator_is_causal(cv) and guidance_scale(cv) == 3.5 and trainer_name(cv) == "score_distillation"
    assert trainer_name(load_config(CONFIGS / "wan_causal_ode.yaml")) == "ode"
    sf = load_config(CONFIGS / "self_forcing_dmd.yaml")
    assert generator_is_causal(sf) and guidance_scale(sf) == 3.0 and warp_shift(sf) == 5.0
    assert real_score_path(sf) == str(Path("wan_models/Wan2.1-T2V-14B"))
    assert real_score_path(load_config(CONFIGS / "tiny" / "wan_causal_dmd.yaml")) == str(Path("runs/tiny/wan"))
    assert real_score_path(load_config(overrides=["real_model_path=/x/teacher"])) == "/x/teacher"


# ---------------------------------------------------------------------------------------------------------------
# Defaults and overrides


def test_defaults_come_from_schema():
    cfg = load_config()
    assert cfg == OmegaConf.structured(Config)
    # Self-Forcing's default_config.yaml values
    assert (cfg.num_training_frames, cfg.weight_decay, cfg.same_step_across_blocks, cfg.context_noise) == \
        (21, 0.01, True, 0)
    assert (cfg.height, cfg.width, cfg.num_frames, cfg.gc_interval, cfg.causal) == (480, 832, 81, 100, True)
    assert cfg.negative_prompt == WAN_NEGATIVE_PROMPT and cfg.wan_model_path == "wan_models/Wan2.1-T2V-1.3B"
    assert cfg.model_kwargs.timestep_shift is None and cfg.model_kwargs.local_attn_size == -1
    assert cfg.grad_accum == 1 and cfg.total_batch_size is None and cfg.denoising_step_list is None
    # a file that omits a key gets the schema's value
    assert load_config(CONFIGS / "wan_causal_dmd.yaml").ema_weight == 0.0


def test_structured_result():
    cfg = load_config(CONFIGS / "self_forcing_dmd.yaml")
    with pytest.raises(OmegaConfBaseException):
        cfg.denoising_step_lst  # noqa: B018
    with pytest.raises(OmegaConfBaseException):
        cfg.batch_size = "two"
    cfg.lr = 3e-6
    assert cfg.lr == 3e-6


def test_overrides_win(tmp_path):
    path = _write(tmp_path, "lr: 1.0e-04\nmodel_kwargs:\n  sink_size: 1\n  local_attn_size: 12\n")
    cfg = load_config(path, ["lr=1e-5", "model_kwargs.sink_size=3", "denoising_step_list=[1000,500]"])
    assert cfg.lr == 1e-5 and cfg.model_kwargs.sink_size == 3 and cfg.model_kwargs.local_attn_size == 12
    assert list(cfg.denoising_step_list) == [1000.0, 500.0]
    assert load_config(path).lr == 1e-4


def test_base_layer(tmp_path):
    base = _write(tmp_path, "lr: 1.0e-04\nbatch_size: 4\n", "base.yaml")
    path = _write(tmp_path, "lr: 1.0e-03\n")
    cfg = load_config(path, base=base)
    assert cfg.lr == 1e-3 and cfg.batch_size == 4
    assert load_config(path, base={"batch_size": 8}).batch_size == 8


def test_save_roundtrip(tmp_path):
    cfg = load_config(CONFIGS / "causal_forcing_dmd_framewise_2step.yaml", ["model_kwargs.sink_size=2"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(out) == cfg
    assert WAN_NEGATIVE_PROMPT in out.read_text(encoding="utf-8")  # readable, not escaped


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_typo_names_file_and_closest_key(tmp_path):
    path = _write(tmp_path, "denoising_step_lst: [1000, 757, 522, 0]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg == f"{path}: unknown key 'denoising_step_lst' (did you mean 'denoising_step_list'?)"
    assert "\n" not in msg


def test_nested_typo(tmp_path):
    path = _write(tmp_path, "model_kwargs:\n  sink_sze: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model_kwargs\.sink_sze' \(did you mean "
                                          r"'model_kwargs\.sink_size'\?\)") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_typo_in_override():
    with pytest.raises(ConfigError, match=r"override 'lrr=1e-5': unknown key 'lrr' \(did you mean 'lr'\?\)"):
        load_config(overrides=["lrr=1e-5"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(overrides=["lr"])


@pytest.mark.parametrize("text, key, value, expected", [
    ("lr: fast\n", "lr", "'fast' (str)", "float"),
    ("batch_size: 1.5\n", "batch_size", "1.5 (float)", "int"),
    ("image_or_video_shape: [1, x, 16, 4, 4]\n", "image_or_video_shape[1]", "'x' (str)", "int"),
    ("generator_grad:\n  model: maybe\n", "generator_grad.model", "'maybe' (str)", "bool"),
    ("model_kwargs: 5\n", "model_kwargs", "5 (int)", "a mapping (ModelKwargs)"),
    ("model_kwargs:\n  sink_size: [3]\n", "model_kwargs.sink_size", "[3] (list)", "int"),
    ("lr: null\n", "lr", "null", "float"),
    ("denoising_step_list: 1000\n", "denoising_step_list", "1000 (int)", "list[float] or null"),
])
def test_wrong_type(tmp_path, text, key, value, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: key '{key}' has value {value}, expected {expected}"


def test_a_wrong_type_is_named_in_the_layer_that_gives_it(tmp_path):
    """load_config merges base, file and overrides in one go; an error still names the layer at fault (and a later
    layer's good value does not hide an earlier layer's bad one)."""
    good, bad = _write(tmp_path, "lr: 0.5\n", "good.yaml"), _write(tmp_path, "batch_size: 1.5\n", "bad.yaml")
    cases = [((good, ["batch_size=two"], None), "override 'batch_size=two': key 'batch_size' has value 'two' (str)"),
             ((bad, ["lr=0.1"], None), f"{bad}: key 'batch_size' has value 1.5 (float)"),
             ((good, ["batch_size=2"], bad), f"{bad}: key 'batch_size' has value 1.5 (float)"),
             ((good, [], {"lr": "fast"}), "base: key 'lr' has value 'fast' (str)")]
    for (path, overrides, base), message in cases:
        with pytest.raises(ConfigError) as err:
            load_config(path, overrides, base=base)
        assert str(err.value).startswith(message + ", expected "), (str(err.value), message)
    assert load_config(good, ["batch_size=2"]).lr == 0.5 and load_config(good, ["lr=0.1"]).lr == 0.1


def test_inconsistent_values(tmp_path):
    with pytest.raises(ConfigError, match="num_frame_per_block=3"):
        load_config(_write(tmp_path, "num_frame_per_block: 3\nimage_or_video_shape: [1, 4, 16, 4, 4]\n"))
    with pytest.raises(ConfigError, match="denoising_step_list"):
        load_config(overrides=["denoising_step_list=[500,1000]"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path / 'nope.yaml'}"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    path = _write(tmp_path, "lr: 1.0e-05\ndenoising_step_list: [1000, 750\nseed: 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: invalid YAML at line 3"):
        load_config(path)
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))


# ---------------------------------------------------------------------------------------------------------------
# Step lists


def test_denoising_steps_causvid():
    assert denoising_steps(load_config(CONFIGS / "wan_causal_dmd.yaml")) == [1000, 757, 522]
    assert denoising_steps(load_config(CONFIGS / "wan_bidirectional_dmd.yaml")) == [1000, 757, 522]
    # CausVid's warp uses timestep_shift (8): the warp_4step_cfg2 list
    warped = denoising_steps(load_config(CONFIGS / "wan_causal_dmd_warp_4step_cfg2.yaml"))
    assert warped == pytest.approx([1000, 960, 888.9, 727.3], abs=0.1)
    assert denoising_steps(load_config(CONFIGS / "ar_diffusion_tf_chunkwise.yaml")) is None


def test_denoising_steps_self_forcing():
    cfg = load_config(CONFIGS / "self_forcing_dmd.yaml")
    assert denoising_steps(cfg) == pytest.approx([1000, 937.5, 833.3, 625], abs=0.1)
    assert leading_block_steps(cfg) == []
    # model_kwargs.timestep_shift wins over timestep_shift for the warp
    cfg = load_config(CONFIGS / "self_forcing_dmd.yaml", ["timestep_shift=8.0"])
    assert denoising_steps(cfg) == pytest.approx([1000, 937.5, 833.3, 625], abs=0.1)
    cfg = load_config(CONFIGS / "self_forcing_dmd.yaml", ["model_kwargs.timestep_shift=8.0"])
    assert denoising_steps(cfg) == pytest.approx([1000, 960, 888.9, 727.3], abs=0.1)


def test_leading_block_steps(tmp_path):
    cfg = load_config(CONFIGS / "causal_forcing_dmd_framewise_2step.yaml")
    assert denoising_steps(cfg) == pytest.approx([1000, 833.3], abs=0.1)
    (first,) = leading_block_steps(cfg)
    assert first == pytest.approx([1000, 937.5, 833.3, 625], abs=0.1)
    # a per-block schedule: each leading list warped like the main one (shift 5, by hand as above)
    cfg = load_config(CONFIGS / "self_forcing_dmd.yaml", ["denoising_step_list_per_block=[[1000,750,500,250],[1000,500]]",
                                                          "denoising_step_list=[1000,250]"])
    assert denoising_steps(cfg) == pytest.approx([1000, 625], abs=0.1)
    assert leading_block_steps(cfg) == [pytest.approx([1000, 937.5, 833.3, 625], abs=0.1),
                                        pytest.approx([1000, 833.3], abs=0.1)]
    for bad in ("[1000,750]", "[[1000,750],[500,750]]", "[]"):
        with pytest.raises(ConfigError, match=r"denoising_step_list_per_block"):
            load_config(CONFIGS / "self_forcing_dmd.yaml", [f"denoising_step_list_per_block={bad}"])
    with pytest.raises(ConfigError, match="no denoising_step_list_first_chunk"):
        load_config(CONFIGS / "causal_forcing_dmd_framewise_2step.yaml", ["denoising_step_list_per_block=[[1000]]"])
    assert denoising_steps(load_config(CONFIGS / "causal_forcing_dmd_framewise_1step.yaml")) == [1000]


def test_ignored_keys_warn_once_per_file_naming_them(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("sharding_strategy: full\ngenerator_grad: {model: false}\nnum_training_frames: 21\n")
    load_config(path)
    load_config(path)  # the same file again (the trainer and the CLIs load it more than once): no second line
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"warning: {path}: accepted for compatibility with the original codebases and ignored here: "
                     "generator_grad={'model': False}, sharding_strategy='full'"]
    # neutral values say nothing: num_training_frames at the training length, generator_task as the model implies
    path.write_text("image_or_video_shape: [1, 6, 16, 8, 8]\nnum_training_frames: 6\nmodel_name: wan\n"
                    "generator_task: bidirectional_video\n")
    load_config(path)
    assert capsys.readouterr().err == ""
    path.write_text("num_training_frames: 27\n")  # Self-Forcing's long-video rollout length is not implemented
    load_config(path)
    assert "num_training_frames=27" in capsys.readouterr().err


@pytest.mark.parametrize("path", [p for p in ALL_FILES if "causal_cd" not in p.stem], ids=lambda p: p.stem)
def test_shipped_configs_set_no_ignored_key(path):
    """Only the CD files' spatial_sf (unread in Causal Forcing too) is ignored; the rest load silently."""
    assert ignored_values(load_config(path)) == []


def test_recache_frames_is_checked():
    assert load_config(overrides=["model_kwargs.recache_frames=1"]).model_kwargs.recache_frames == 1
    assert load_config().model_kwargs.recache_frames == -1  # LongLive's: the whole window
    with pytest.raises(ConfigError, match=r"model_kwargs.recache_frames=0: give the number of latest latent frames"):
        load_config(overrides=["model_kwargs.recache_frames=0"])
    assert load_config().model_kwargs.recache_noise == 0  # LongLive's: clean
    with pytest.raises(ConfigError, match=r"model_kwargs.recache_noise=-1.0: give the timestep in \[0, 1000\]"):
        load_config(overrides=["model_kwargs.recache_noise=-1"])


def test_rope_positions_is_checked():
    assert load_config(overrides=["model_kwargs.rope_positions=window"]).model_kwargs.rope_positions == "window"
    with pytest.raises(ConfigError, match="model_kwargs.rope_positions='relative'"):
        load_config(overrides=["model_kwargs.rope_positions=relative"])


def test_guidance_scale_has_one_meaning_and_old_dmd_files_still_load(tmp_path):
    """guidance_scale is Wan's form (uncond + g (cond - uncond)) everywhere; the DMD real score's scale s of
    cond + s (cond - uncond) is real_guidance_scale. A Self-Forcing / Causal-Forcing DMD file that gives s as
    guidance_scale (the toy configs' old form, the seeds' self_forcing_dmd.yaml) loads to the same config as one
    that says both: s stays the real score's scale, guidance_scale becomes s + 1 (by hand: 0.5 -> 1.5, 3 -> 4)."""
    from causvid.config import guidance_scale, load_config, save_config

    new = CONFIGS / "toy" / "cf_dmd_chunkwise.yaml"
    old = tmp_path / "old.yaml"
    old.write_text(new.read_text().replace("guidance_scale: 1.5", "guidance_scale: 0.5").replace(
        "real_guidance_scale: 0.5", ""))
    assert "real_guidance_scale" not in old.read_text()
    a, b = load_config(old), load_config(new)
    assert a == b and (b.guidance_scale, b.real_guidance_scale, guidance_scale(b)) == (1.5, 0.5, 0.5)
    seed = load_config(CONFIGS / "self_forcing_dmd.yaml")  # the original's file: guidance_scale: 3.0
    assert (seed.guidance_scale, seed.real_guidance_scale) == (4.0, 3.0)
    cd = load_config(CONFIGS / "toy" / "cf_cd_chunkwise.yaml")  # not DMD: Wan's form as written
    assert (cd.guidance_scale, cd.real_guidance_scale) == (1.5, None)
    causvid = load_config(CONFIGS / "wan_causal_dmd.yaml")  # CausVid's own key, as written
    assert causvid.real_guidance_scale == 3.5
    save_config(b, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == b  # a run's saved config is read the same way again
