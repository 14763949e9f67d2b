"""How every command line reports a problem: one line on stderr that names the file, flag, key or value and says
what to do, and an exit code: 2 when the input can't be used (a flag, a config key, an input file, a folder),
1 when the work itself failed, 130 on Ctrl-C. `--debug` or CAUSVID_DEBUG=1 shows the Python traceback instead.

Errors the user can fix are raised as `UsageError` (or a subclass: ConfigError, PromptFileError,
CheckpointError, LMDBDataError, ...) and failures of the work as `RunError` (VideoWriteError,
TrainingDiverged); `run_cli` turns them, and the OSErrors that carry a file name, into that one line. Any other
exception is a bug and keeps its traceback. `ArgumentParser` gives argparse's errors the same one-line form.
"""
import argparse
import os
import sys

__all__ = ["UsageError", "RunError", "ArgumentParser", "run_cli", "exit_code", "positive_int", "non_negative_int",
           "debug_enabled", "USAGE", "FAILED", "INTERRUPTED"]

USAGE, FAILED, INTERRUPTED = 2, 1, 130


class UsageError(ValueError):
    """Input that can't be used as given (flag, config key, input file or folder); exit code 2."""
    exit_code = USAGE


class RunError(RuntimeError):
    """The work failed although the input was accepted (an output could not be written, training diverged);
    exit code 1."""
    exit_code = FAILED


def exit_code(err: BaseException):
    """The exit code of an error the user can act on, or None for a bug (which keeps its traceback)."""
    code = getattr(err, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return USAGE  # a path the user gave does not lead where it should
    if isinstance(err, OSError) and err.filename is not None:
        return FAILED  # permissions, disk full, ... while working on a named file
    if isinstance(err, ValueError):
        return USAGE  # a value the code refused, with a message that says which
    return None


def message(err: BaseException) -> str:
    """The error as one line."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def debug_enabled(argv=()) -> bool:
    return "--debug" in argv or os.environ.get("CAUSVID_DEBUG", "0") not in ("", "0")


def run_cli(main, argv=None) -> int:
    """Run `main(argv)` and return its exit code; known errors become one line on stderr and their exit code,
    Ctrl-C becomes one line and 130. With --debug in argv or CAUSVID_DEBUG=1 errors are raised as they are."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_enabled(argv)
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted (Ctrl-C): finished outputs are kept, unfinished ones removed", file=sys.stderr)
        return INTERRUPTED
    except Exception as err:
        code = exit_code(err)
        if code is None or debug:
            raise
        print(f"error: {message(err)}", file=sys.stderr)
        return code


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error ("prog: error: argument --x: ... (see --help)") and a --debug flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help="show the Python traceback of an error instead of one line (also CAUSVID_DEBUG=1)")

    def error(self, message):
        self.exit(USAGE, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _bounded_int(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _bounded_int(text, 0, "an integer >= 0")


def _bounded_int(text, low, what):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value
