"""The runner: parts in order, each timed and written to the JSON as soon as it finishes (tmp file + rename, so the
file is always whole); a part that fails records its error and the rest go on; when the budget runs out the running
part is stopped (SIGALRM) and the rest are recorded as skipped. No torch here."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class SkipPart(Exception):
    """Raised by a part that cannot run here; the reason is recorded."""


class BudgetExceeded(BaseException):
    """Raised in the main thread when --budget_s runs out (a BaseException: no `except Exception` swallows it)."""


@dataclass
class Part:
    name: str
    fn: Callable  # fn(check) -> dict; raises SkipPart to be skipped


def write_json(path: Path, data: dict) -> None:
    """Atomically: a reader (or a run killed mid-write) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _selected(name: str, selection) -> bool:
    return selection is None or any(name == s or name.startswith(s.rstrip(".") + ".") for s in selection)


def run_parts(parts: list, check, out: Path, meta: dict, budget_s: float, selection=None,
              fail=(), keep: dict = None) -> dict:
    """Run the parts in order, rewriting `out` after each. Every part's key is there from the start
    ("pending"), then "ok" (result), "error" (error, traceback), or "skipped" (reason)."""
    results = dict(meta=dict(meta, state="running"), parts={p.name: {"status": "pending"} for p in parts})
    check.results = results
    start = time.perf_counter()
    write_json(out, results)
    use_alarm = budget_s > 0 and threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")

    def on_alarm(*_):
        raise BudgetExceeded(f"the budget of {budget_s:g} s ran out")

    previous = signal.signal(signal.SIGALRM, on_alarm) if use_alarm else None
    stopped = None
    try:
        for part in parts:
            record = results["parts"][part.name]
            remaining = budget_s - (time.perf_counter() - start)
            if keep and (keep.get(part.name) or {}).get("status") == "ok":
                results["parts"][part.name] = dict(keep[part.name], kept_from_earlier_run=True)
            elif stopped is not None or remaining <= 0:
                stopped = stopped or f"the budget of {budget_s:g} s ran out"
                record.update(status="skipped", reason=f"not started: {stopped}")
            elif not _selected(part.name, selection):
                record.update(status="skipped", reason="not selected (--parts)")
            else:
                check.log(f"== {part.name}")
                t0 = time.perf_counter()
                try:
                    try:
                        if use_alarm:
                            signal.setitimer(signal.ITIMER_REAL, remaining)
                        if part.name in fail:
                            raise RuntimeError(f"forced failure of {part.name} (--fail_part)")
                        result = part.fn(check)
                    finally:  # disarmed before any handler below runs
                        if use_alarm:
                            signal.setitimer(signal.ITIMER_REAL, 0)
                    record.update(status="ok", result=result)
                except SkipPart as why:
                    record.update(status="skipped", reason=str(why))
                except BudgetExceeded as why:
                    stopped = str(why)
                    record.update(status="error", error=f"stopped: {why}")
                except Exception as err:  # recorded; the next part runs
                    record.update(status="error", error=f"{type(err).__name__}: {err}",
                                  traceback=traceback.format_exc().splitlines()[-12:])
                record["seconds"] = time.perf_counter() - t0
                check.free()
                check.log(f"   {part.name}: {record['status']} in {record['seconds']:.1f} s"
                          + (f" ({record.get('error') or record.get('reason')})" if record["status"] != "ok" else ""))
            results["meta"]["elapsed_s"] = time.perf_counter() - start
            write_json(out, results)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    results["meta"].update(state="stopped: " + stopped if stopped else "finished",
                           elapsed_s=time.perf_counter() - start)
    write_json(out, results)
    return results
