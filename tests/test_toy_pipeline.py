"""The toy pipeline end to end at a few steps per stage: each stage's output feeds the next (the real trainer,
LMDB, ODE and rollout code), the report is written, and a second run resumes by skipping finished stages.
Quality is not asserted here (a few steps train nothing); the full run's figures are in the report."""
import json
import re

from causvid.toy.pipeline import LAYOUTS, main


def test_quick_pipeline_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "toy"
    assert main(["--out", str(out), "--quick"]) == 0
    stages = ["base", "data", "teacher", "ode_pairs", "evaluate"] + [
        f"{s}_{layout}" for layout in LAYOUTS for s in
        ("causvid_ode", "causvid_dmd", "ar_diffusion", "causal_ode_data", "cf_ode", "cf_dmd")]
    for stage in stages:
        assert (out / stage / "DONE").exists(), stage
    for stage in ("causvid_dmd_chunkwise", "cf_dmd_framewise", "ar_diffusion_chunkwise"):
        assert list((out / stage / "run").glob("checkpoint_model_*/model.pt")), stage
    results = json.loads((out / "evaluate" / "results.json").read_text())
    assert len(results) == 11  # teacher + 5 models x 2 layouts
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "|---" not in line]
    assert any("Causal Forcing DMD (chunkwise)" in r for r in rows) and any("teacher" in r for r in rows)
    assert re.search(r"\| \*\*total\*\* \| \d+ \|", report)
    before = {s: (out / s / "DONE").stat().st_mtime_ns for s in stages}
    assert main(["--out", str(out), "--quick"]) == 0  # resumes: nothing is redone
    assert before == {s: (out / s / "DONE").stat().st_mtime_ns for s in stages}
