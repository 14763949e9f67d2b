"""`python tests/stop_at_step.py STEP SIGNAL SCRIPT ARGS...`: run SCRIPT (train.py) as `python SCRIPT ARGS...`,
except that the process sends itself SIGNAL right after the trainer logs step STEP. The signal arrives at a known
step, with no clock and no polling (the Python handler runs as soon as os.kill returns). Not a test module."""
import os
import runpy
import signal
import sys

from causvid.training.trainer import Trainer

step, name, script = int(sys.argv[1]), sys.argv[2], sys.argv[3]
log = Trainer._log


def log_then_signal(self, logs):
    log(self, logs)
    if self.step == step:
        os.kill(os.getpid(), getattr(signal, name))


Trainer._log = log_then_signal
sys.argv = sys.argv[3:]
runpy.run_path(script, run_name="__main__")
