"""The repo's scripts (the seeds' CLIs live outside the package) loaded as modules, so tests call their
`main(argv)` in-process."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str):
    """The module of the script at ``relpath`` (relative to the repo root)."""
    spec = importlib.util.spec_from_file_location(relpath.replace("/", "_").removesuffix(".py"), ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
