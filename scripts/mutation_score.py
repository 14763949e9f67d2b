"""Mutation score of the core files: how many deliberately broken versions of each file the tests catch.

Run by hand (not in CI; it takes about an hour on two cores), from the repo root:

    pip install -r requirements-dev.txt           # mutmut
    python -m scripts.mutation_score              # every file in TARGETS
    python -m scripts.mutation_score causvid/flow.py --workdir /tmp/mut

For each file it copies the repo into `<workdir>/<file>/`, runs `mutmut run` there with only that file mutated
and only the test files that cover it selected (mutmut narrows further, per mutated function, to the tests that
call it), one test process at a time (`--max-children`, default 1) with mutmut's per-mutant timeout, then prints and
writes (`--out`, JSON) killed / survived / timeout / no-tests per file and the names of the survivors. Read a
survivor with `cd <workdir>/<file> && python -m mutmut show <name>`. Results and the equivalent survivors are
written up in docs/mutation.md.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# file -> the tests that cover it, kept narrow (each mutant then runs only those of them that call the mutated
# function): the hand-computation and fidelity tests, not the slow end-to-end training runs
CD = "tests/test_consistency.py::"
# (not test_memory.py's torchrun test: mutmut does not trace other processes)
MEMORY = "tests/test_memory.py::"
TARGETS = {
    "causvid/flow.py": ["tests/test_flow.py", "tests/test_losses_by_hand.py"],
    "causvid/training/losses.py": ["tests/test_losses_by_hand.py", "tests/test_training_fidelity.py",
                                   CD + "test_cd_loss_equals_a_hand_computation_from_wandit_calls",
                                   CD + "test_cd_loss_boundary_takes_the_euler_result_as_target"],
    "causvid/training/stages.py": ["tests/test_losses_by_hand.py", "tests/test_training_fidelity.py",
                                   "tests/test_stage_errors.py",
                                   CD + "test_cd_loss_equals_a_hand_computation_from_wandit_calls",
                                   CD + "test_cd_draws_one_grid_level_per_video",
                                   "tests/test_long_rollout.py::test_window_choices_and_bad_lengths",
                                   "tests/test_long_rollout.py::test_gradient_is_the_windows_exit_steps_on_the_same_rollout",
                                   "tests/test_long_rollout.py::test_rope_positions_reach_the_training_rollout",
                                   "tests/test_long_rollout.py::test_windows_by_hand_for_other_layouts_seeds_roles_and_"
                                   "kv_windows"],
    "causvid/pipelines/rollout.py": ["tests/test_rollout.py", "tests/test_losses_by_hand.py",
                                     "tests/test_training_fidelity.py", "tests/test_stream.py",
                                     "tests/test_serve_cfg.py", "tests/test_long_rollout.py"],
    "causvid/pipelines/stream.py": ["tests/test_stream.py", "tests/test_stream_cli.py"],
    "causvid/models/wan/kv_cache.py": ["tests/test_kv_cache.py", "tests/test_dit.py", "tests/test_rollout.py",
                                       "tests/test_stream.py",
                                       "tests/test_serve_cfg.py", "tests/test_training_fidelity.py",
                                       "tests/test_long_rollout.py", *(MEMORY + name for name in (
                                           "test_checkpointed_cached_rollout_gives_the_same_gradients",
                                           "test_checkpointed_rollout_holds_the_layer_input_and_the_cache_per_"
                                           "token_and_layer",
                                           "test_long_rollout_holds_the_layer_input_and_each_read_value_once"))],
    "causvid/models/wan/attention.py": ["tests/test_kv_cache.py", "tests/test_dit.py", "tests/test_rollout.py",
                                        "tests/test_stream.py"],
}
# tests left out of mutmut's run for a file: FlexAttention compiles the mask function with dynamo, which cannot
# trace the trampoline mutmut wraps every function of the mutated file in (it reads a ContextVar). After the run
# each survivor is written into the file as plain code (`mutmut apply`) and these tests run on it: a failure
# kills it ("killed_by_deselected" counts those)
DESELECT = {"causvid/models/wan/attention.py": ["tests/test_dit.py::test_flex_attention_equals_sdpa"]}
SKIP = {".git", "docs", "mutants", "README.md", "__pycache__", "runs", "outputs"}  # not needed by the tests
STATUSES = ("killed", "survived", "timeout", "no tests", "suspicious", "skipped", "segfault")


def setup_cfg(target: str, tests: list, copied: list) -> str:
    deselect = "".join(f"\n    --deselect\n    {t}" for t in DESELECT.get(target, []))
    lines = ["[mutmut]", "source_paths=src/causvid", f"only_mutate=src/{target}",
             "also_copy=\n" + "\n".join(f"    {name}" for name in copied if name != "causvid"),
             "pytest_add_cli_args_test_selection=\n" + "\n".join(f"    {t}" for t in tests),
             "pytest_add_cli_args=\n    -p\n    no:cacheprovider\n    -x\n    -q" + deselect,
             "process_isolation=forkserver", "debug=true", "timeout_multiplier=5.0", "timeout_constant=10.0"]
    return "\n".join(lines) + "\n"


def prepare(target: str, tests: list, work: Path, root: Path) -> dict:
    """A fresh copy of `root` in `work` with mutmut's setup.cfg; the environment to run mutmut in."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    # the package goes under src/ (mutmut puts mutants/src first on the path): a causvid/ beside the tests would
    # shadow the mutated copy for anything that imports it before mutmut arranges sys.path
    copied = sorted(p.name for p in root.iterdir() if p.name not in SKIP and p.name != "setup.cfg")
    for name in copied:
        src, dst = root / name, work / ("src/causvid" if name == "causvid" else name)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    selected = [t for t in tests if (root / t.split("::")[0]).exists()]
    (work / "setup.cfg").write_text(setup_cfg(target, selected, copied))
    # PYTHONPATH (for the tests' subprocesses) names mutants/src before mutmut fills it: it must exist by then, or
    # Python caches it as missing and imports the installed (unmutated) causvid instead
    (work / "mutants" / "src").mkdir(parents=True)
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{work / 'mutants' / 'src'}:{work / 'mutants'}")


def results(target: str, work: Path, env: dict) -> dict:
    listing = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env,
                             capture_output=True, text=True, check=True).stdout
    status = {}
    for line in listing.splitlines():
        name, _, verdict = line.strip().rpartition(": ")
        if verdict in STATUSES or verdict == "not checked":
            status[name] = verdict
    return status


def summary(target: str, status: dict, work: Path) -> dict:
    counts = {s: sum(v == s for v in status.values()) for s in STATUSES + ("not checked",)}
    tested = sum(counts.values()) - counts["no tests"] - counts["skipped"] - counts["not checked"]
    killed = counts["killed"] + counts["timeout"] + counts["segfault"]
    score = 100.0 * killed / tested if tested else float("nan")
    return dict(file=target, score=round(score, 1), **counts,
                survivors=sorted(n for n, v in status.items() if v == "survived"), workdir=str(work))


def recheck_deselected(target: str, work: Path, env: dict, status: dict) -> list:
    """The survivors that the tests DESELECT leaves out of mutmut's run kill, run on each mutant applied as plain
    code; the file is restored after each."""
    tests = DESELECT.get(target, [])
    source = work / "src" / target
    original = source.read_text()
    killed = []
    for name in [n for n, v in status.items() if v == "survived"] if tests else []:
        subprocess.run([sys.executable, "-m", "mutmut", "apply", name], cwd=work, env=env, check=True,
                       capture_output=True)
        try:
            run = subprocess.run([sys.executable, "-m", "pytest", "-n0", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                 cwd=work, env={**env, "PYTHONPATH": str(work / "src")}, capture_output=True)
        finally:
            source.write_text(original)
        if run.returncode not in (0, 1):
            raise SystemExit(f"the deselected tests of {target} did not run on {name}: {run.stdout[-2000:]}")
        if run.returncode == 1:
            killed.append(name)
    return killed


def run_one(target: str, tests: list, workdir: Path, root: Path = ROOT, only: list = None, earlier: dict = None,
            children: int = 1):
    """Mutate `target`, run the tests; `only`: just these mutants, the others keep their verdicts in `earlier`."""
    work = workdir / target.replace("/", "_")
    env = prepare(target, tests, work, root)
    print(f"{target}: mutmut run in {work} (log: {work / 'mutmut.log'})", flush=True)
    with open(work / "mutmut.log", "w") as log:
        run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *(only or [])],
                             cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    if run.returncode != 0:
        raise SystemExit(f"mutmut failed on {target} (exit {run.returncode}); see {work / 'mutmut.log'}")
    status = results(target, work, env)
    if only is not None:
        status = {**earlier, **{n: status[n] for n in only}}
    killed_by_deselected = recheck_deselected(target, work, env, status)
    status.update({name: "killed" for name in killed_by_deselected})
    (work / "status.json").write_text(json.dumps(status, indent=0) + "\n")
    return {**summary(target, status, work), "killed_by_deselected": len(killed_by_deselected)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=list(TARGETS), help="files to mutate (default: all TARGETS)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/causvid-mutation"))
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to test (default: this one)")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    parser.add_argument("--max-children", type=int, default=1,
                        help="mutants tested at once (default 1; more is faster, but a loaded machine can push "
                             "slow tests past mutmut's timeout, which counts them killed)")
    parser.add_argument("--rerun", type=Path, default=None,
                        help="a workdir of an earlier run (say, before new tests): run only its survivors and "
                             "mutants without tests again, keeping its other verdicts")
    args = parser.parse_args(argv)
    unknown = [f for f in args.files if f not in TARGETS]
    if unknown:
        parser.exit(2, f"unknown file {unknown[0]!r}: choose from {', '.join(TARGETS)}\n")
    if shutil.which("mutmut") is None and subprocess.run([sys.executable, "-c", "import mutmut"]).returncode:
        parser.exit(2, "mutmut is not installed: pip install -r requirements-dev.txt\n")
    results = []
    for f in args.files:
        if args.rerun is not None:
            earlier = json.loads((args.rerun / f.replace("/", "_") / "status.json").read_text())
            again = [n for n, v in earlier.items() if v in ("survived", "no tests")]
            results.append(run_one(f, TARGETS[f], args.workdir, args.root, again, earlier, args.max_children))
        else:
            results.append(run_one(f, TARGETS[f], args.workdir, args.root, children=args.max_children))
    for r in results:
        print(f"{r['file']}: {r['score']}% killed ({r['killed']} killed, {r['timeout']} timeout, "
              f"{r['survived']} survived, {r['no tests']} without tests)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
