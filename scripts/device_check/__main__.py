"""python -m scripts.device_check: exit code 1 when a part failed."""
import sys

from scripts.device_check.cli import main

sys.exit(1 if any(p["status"] == "error" for p in main()["parts"].values()) else 0)
