"""Where the shipped toy student is: `configs/toy` and `checkpoints/toy` of a source checkout, or, in an installed
package (`pip install .`), the copies setup.py's build step puts beside this file (`causvid/serve/shipped/`).
Imports nothing heavy: the command line resolves its defaults before torch loads."""
from pathlib import Path

__all__ = ["toy_root", "toy_config", "toy_folder", "CHECKOUT", "PACKAGED"]

CHECKOUT = Path(__file__).resolve().parents[2]          # the repository root of a source checkout
PACKAGED = Path(__file__).resolve().parent / "shipped"  # the copies in an installed package
TOY_STUDENT = Path("configs") / "toy" / "cf_dmd_chunkwise.yaml", Path("checkpoints") / "toy"


def toy_root() -> Path:
    """The folder holding configs/toy and checkpoints/toy: the checkout's if this is one, else the package's."""
    for root in (CHECKOUT, PACKAGED):
        if all((root / part).exists() for part in TOY_STUDENT):
            return root
    return CHECKOUT  # neither: the error that follows names the checkout's path


def toy_config() -> Path:
    return toy_root() / TOY_STUDENT[0]


def toy_folder() -> Path:
    return toy_root() / TOY_STUDENT[1]
