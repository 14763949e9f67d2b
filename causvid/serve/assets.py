"""Where the shipped toy student is (the framewise long-video student, `checkpoints/toy_long` with
`configs/toy/cf_dmd_framewise.yaml`: it holds its prompt in every window of an endless stream, README "Long
videos"): `configs/toy` and `checkpoints/toy_long` of a source checkout, or, in an installed
package (`pip install .`), the copies setup.py's build step puts beside this file (`causvid/serve/shipped/`).
Imports nothing heavy: the command line resolves its defaults before torch loads."""
from pathlib import Path

__all__ = ["toy_root", "toy_config", "toy_folder", "CHECKOUT", "PACKAGED"]

CHECKOUT = Path(__file__).resolve().parents[2]          # the repository root of a source checkout
PACKAGED = Path(__file__).resolve().parent / "shipped"  # the copies in an installed package
TOY_STUDENT = Path("configs") / "toy" / "cf_dmd_framewise.yaml", Path("checkpoints") / "toy_long"


def toy_root() -> Path:
    """The folder holding configs/toy and checkpoints/toy_long: the checkout's if this is one, else the package's."""
    for root in (CHECKOUT, PACKAGED):
        if all((root / part).exists() for part in TOY_STUDENT):
            return root
    return CHECKOUT  # neither: the error that follows names the checkout's path


def toy_config() -> Path:
    return toy_root() / TOY_STUDENT[0]


def toy_folder() -> Path:
    return toy_root() / TOY_STUDENT[1]
