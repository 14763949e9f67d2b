"""Every command line answers `--help`, an unknown flag, a missing input file and a bad value before torch loads:
one process runs them all in turn (as `python FILE` / `python -m MODULE` would, through runpy) and fails naming
the first answer after which torch is in sys.modules. The times are scripts/benchmark_startup.py's, not a test's."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.benchmark_startup import CLIS

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r"""
import contextlib, io, json, runpy, sys
clis = json.loads(sys.argv[1])
for name, cli in clis.items():
    for what, flags in [("--help", ["--help"])] + list(cli["errors"].items()):
        command = cli["command"]
        sys.argv = [command[-1]] + flags
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                if command[0] == "-m":
                    runpy.run_module(command[1], run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(command[0], run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        lines = err.getvalue().strip().splitlines()
        print(json.dumps(dict(cli=name, what=what, code=code, torch="torch" in sys.modules,
                              last=lines[-1] if lines else "", lines=len(lines))), flush=True)
        if "torch" in sys.modules:
            sys.exit(0)
"""


def test_every_cli_answers_before_torch_loads(tmp_path):
    clis = CLIS
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(clis)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = [f"{r['cli']} {r['what']}" for r in rows if r["torch"]]
    assert not loaded, f"torch was imported by the time of: {loaded[0]}"
    assert len(rows) == 4 * len(clis)  # every answer given
    for r in rows:
        if r["what"] == "--help":
            assert r["code"] == 0, r
        else:  # bad input: one line on stderr naming what is wrong, a non-zero exit code, no traceback
            assert r["code"] in (1, 2) and r["lines"] == 1 and "Traceback" not in r["last"], r


def test_default_threads_follow_the_work_and_the_machine(monkeypatch):
    """By hand, on a 2-core machine: a toy-width model gets the idle cores (2 - load average, at least 1), a
    Wan-width one every core, OMP_NUM_THREADS wins when set."""
    from causvid import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    for load, expected in ((0.1, 2), (0.9, 1), (7.5, 1)):
        monkeypatch.setattr(threads.os, "getloadavg", lambda load=load: (load, load, load))
        assert threads.default_threads("cpu", 256)[0] == expected, load
        assert threads.default_threads("cpu", 1536)[0] == 2  # Wan-size: every core
        assert threads.default_threads("cpu", None)[0] == 2  # unknown width: taken as large
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.default_threads("cpu", 1536) == (1, "OMP_NUM_THREADS")


@pytest.mark.long(10)
def test_the_toy_student_loads_without_transformers_or_diffusers():
    """The main job's components come from the toy folder's own classes: umT5 (transformers) and the Wan VAE
    (diffusers), seconds of imports, load only for a folder that names them."""
    code = ("import sys; from causvid.pipelines.text_to_video import load_components; load_components('checkpoints/toy'); "
            "print(sorted(m for m in ('transformers', 'diffusers', 'ftfy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
