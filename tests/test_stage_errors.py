"""Each training stage's config errors, in-process: one line naming the key, its value and what to set (the CLI
turns them into its one-line message, tests/test_cli_errors.py), and the ODE rows' slot counts each layout takes."""
from pathlib import Path

import pytest

from causvid.config import ConfigError, load_config
from causvid.training.stages import make_stage

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny"
SLOTS = ("ODE rows have {} slot(s); ode_layout {} with the step list {} needs {}: set ode_layout (causvid: {} or {} "
         "slots, causal_forcing: {}) to match the data, or point data_path at ODE pairs (a latent LMDB has 1 slot: "
         "train on it with a diffusion config)")


@pytest.mark.parametrize("config, override, message", [
    ("ar_diffusion_tf_chunkwise", "causal=false",
     "teacher_forcing needs a causal generator (causal: true / generator_name: causal_wan)"),
    ("ar_diffusion_tf_chunkwise", "diffusion_loss_weighting=square",
     "diffusion_loss_weighting='square': expected 'bump' (Self-Forcing's) or 'uniform'"),
    ("causal_ode_chunkwise", "denoising_step_list=null",
     "the ode trainer needs denoising_step_list (the levels the ODE pairs were saved at)"),
    ("self_forcing_dmd", "denoising_step_list=null", "DMD needs denoising_step_list (the generator's few steps)"),
    ("self_forcing_dmd", "kv_cache_gradient=none",
     "kv_cache_gradient='none': expected 'straight_through' (Self-Forcing's) or 'detached'"),
    ("self_forcing_dmd", "causal=false",
     "dmd_input self_forcing (trainer: score_distillation) needs a causal generator"),
    ("self_forcing_dmd", "long_rollout_frames=3",
     "long_rollout_frames=3: needs a Self-Forcing rollout and at least the training length (6 latent frames), or 0"),
    ("wan_causal_dmd", "long_rollout_frames=42",
     "long_rollout_frames=42: needs a Self-Forcing rollout and at least the training length (6 latent frames), or 0"),
    ("self_forcing_dmd", "long_rollout_window=first", "long_rollout_window='first': expected 'uniform' or 'last'"),
    ("self_forcing_dmd", "trainer=gan", "trainer 'gan' is not implemented; choose one of "
                                        "['consistency_distillation', 'diffusion', 'ode', 'score_distillation']"),
    ("self_forcing_dmd", "distribution_loss=sid", "distribution_loss 'sid' is not implemented (only 'dmd')"),
    ("causal_cd_chunkwise", "causal=false",
     "consistency_distillation needs a causal generator (causal: true): it is teacher-forced"),
    ("causal_cd_chunkwise", "ema_weight=1",
     "ema_weight=1.0: consistency distillation needs an EMA target; set 0 < ema_weight < 1 (Causal Forcing: 0.99)"),
    ("causal_cd_chunkwise", "ema_weight=0",
     "ema_weight=0.0: consistency distillation needs an EMA target; set 0 < ema_weight < 1 (Causal Forcing: 0.99)"),
    ("causal_cd_chunkwise", "discrete_cd_N=1", "discrete_cd_N=1: need at least 2 grid levels (Causal Forcing: 48)"),
])
def test_a_bad_stage_setting_is_one_line_naming_it(config, override, message):
    with pytest.raises(ConfigError) as error:
        make_stage(load_config(TINY / f"{config}.yaml", overrides=[override]))
    assert str(error.value) == message


def test_ode_rows_take_the_layouts_slot_counts():
    """CausVid's layout: a slot per listed level (its trailing 0 the clean end), or one more; Causal Forcing's:
    noise, the levels, the ODE output and the real latent. Any other count is one line naming where it came from."""
    causvid = make_stage(load_config(TINY / "wan_causal_ode.yaml"))  # levels [1000, 757, 522, 0]
    forcing = make_stage(load_config(TINY / "causal_ode_chunkwise.yaml"))  # 4 levels, 6 slots
    assert [causvid.check_slots(s) for s in (4, 5)] == [False, False] and forcing.check_slots(6) is True
    for stage, slots, where, expected in [
            (causvid, 3, None, "the data: " + SLOTS.format(3, "'causvid'", "[1000, 757, 522, 0]", "4 or 5", 4, 5, 6)),
            (causvid, 6, "data_path /d", "data_path /d: " + SLOTS.format(
                6, "'causvid'", "[1000, 757, 522, 0]", "4 or 5", 4, 5, 6)),
            (forcing, 5, "data_path /d", "data_path /d: " + SLOTS.format(
                5, "'causal_forcing'", "[1000, 937.5, 833.333, 625]", "6", 4, 5, 6))]:
        with pytest.raises(ConfigError) as error:
            stage.check_slots(slots) if where is None else stage.check_slots(slots, where)
        assert str(error.value) == expected


def test_the_edges_of_the_ranges_are_allowed():
    """The smallest grid consistency distillation runs on (2 levels), EMA weights just inside (0, 1)."""
    for overrides in (["discrete_cd_N=2"], ["ema_weight=0.001"], ["ema_weight=0.999"]):
        assert make_stage(load_config(TINY / "causal_cd_chunkwise.yaml", overrides=overrides))
