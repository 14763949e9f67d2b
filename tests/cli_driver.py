"""Run many command lines in one Python process, each as `python SCRIPT ARGS...` would run it (the script's
`__main__` block and its sys.exit included), with its own environment variables and its own stdout / stderr
(captured at the file descriptors, so logging handlers and progress bars are captured too). An exception that
escapes a script is printed as Python prints it ("Traceback ...") with exit code 1, as the interpreter does.

    python tests/cli_driver.py cases.json results.json

cases.json: {name: {"script": path, "argv": [...], "env": {...}}}; results.json: {name: {"code", "stdout",
"stderr"}}. Used by tests/test_cli_errors.py so that all its rows cost one interpreter start (not a test module).
"""
import json
import os
import runpy
import sys
import tempfile
import traceback


def run_case(script, argv, env):
    saved_env, saved_argv = dict(os.environ), sys.argv
    os.environ.update(env)
    sys.argv = [script, *argv]
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    try:
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:  # what the interpreter does with an uncaught exception
            traceback.print_exc()
            code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    out.seek(0)
    err.seek(0)
    return {"code": code, "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}


def main(cases_path, results_path):
    with open(cases_path) as f:
        cases = json.load(f)
    results = {name: run_case(case["script"], case["argv"], case.get("env", {})) for name, case in cases.items()}
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
