"""The server from an installed package, not a checkout: a wheel built from the package's sources, installed in a
fresh venv (with the machine's site-packages for torch and the other dependencies), started from another folder
through the `causvid-serve` console script with no flag: it serves the toy student shipped in the wheel, and
`/healthz` answers. Every wait is on the server's output or the process's end."""
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["setup.py", "causvid", "configs/toy", "checkpoints/toy_long"]  # what the build reads
LIMIT_S = 120  # a hang fails the test instead of blocking the suite


@pytest.mark.long(12)
def test_the_installed_package_serves_the_shipped_toy_student(tmp_path):
    src = tmp_path / "src"
    for part in SOURCES:  # a copy, so the build leaves nothing in the checkout
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__", "shipped"))
        else:
            (src / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / part, src / part)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    quiet = dict(check=True, capture_output=True, env=env, timeout=LIMIT_S)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(tmp_path / "venv")], **quiet)
    # `pip install .` (a wheel built and installed, not editable); the build uses this machine's setuptools
    subprocess.run([sys.executable, "-m", "pip", "--python", str(tmp_path / "venv" / "bin" / "python"), "install",
                    "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src)], **quiet)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    server = subprocess.Popen([str(tmp_path / "venv" / "bin" / "causvid-serve"), "--port", "0"], cwd=elsewhere,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # the start-up line, once the model is loaded and the port bound
        assert line.startswith("serving cf_dmd_framewise ("), (line, server.stderr.read() if not line else "")
        url = line.split(" at ")[1].split(" ")[0]
        with urllib.request.urlopen(url + "/healthz", timeout=LIMIT_S) as response:
            health = json.load(response)
        assert health["status"] == "ok" and (health["width"], health["height"]) == (32, 32)
        assert "causvid/serve/shipped/checkpoints/toy_long" in health["model"]  # the wheel's copy, not a checkout's
        assert "red" in health["vocabulary"]["colours"] and health["suggestions"]
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=LIMIT_S)
    assert server.returncode == 0, err
    assert out.splitlines()[-1] == "stopped; served 0 session(s), wrote nothing"
