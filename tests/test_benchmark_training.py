"""scripts/benchmark_training.py: a stage runs through train.py and its row carries the trainer's own figures
(steps/s and peak memory parsed from the closing line), not 'failed'. No timing is asserted."""
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.long(10)
def test_one_stage_reports_steps_per_second_and_peak_memory(capsys):
    spec = importlib.util.spec_from_file_location("benchmark_training", REPO / "scripts/benchmark_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--steps", "1", "--stages", "causal_forcing_dmd_chunkwise"])
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 2 and rows[0].split()[:2] == ["stage", "steps/s"]
    assert re.fullmatch(r"causal_forcing_dmd_chunkwise +\d+\.\d+ +\d+(\.\d+)? [KMG]iB .*", rows[1]), rows[1]
