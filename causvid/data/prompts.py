"""Prompt files for the inference CLIs.

A prompt file holds one prompt per line, as in CausVid / Self-Forcing's
``TextDataset``.  Lines are stripped; blank lines are skipped (with a single
warning saying how many).  Every problem with the file itself is reported as a
one-line :class:`PromptFileError` that names the file.

Line splitting follows Python's text mode (``\\n``, ``\\r\\n`` and a lone
``\\r`` end a line); other Unicode separators such as U+2028 stay inside the
prompt.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Sequence, TypeVar

from causvid.errors import UsageError

__all__ = ["PromptFileError", "read_prompt_file", "Schedule", "read_prompt_schedule", "check_schedule_blocks",
           "PromptDataset",
           "shard_for_rank"]

_BOM = b"\xef\xbb\xbf"

T = TypeVar("T")


class PromptFileError(UsageError):
    """A prompt file can't be used: missing, a folder, empty, or not UTF-8."""


def _normalise_newlines(data):
    """Map \\r\\n and a lone \\r to \\n (works on str and bytes)."""
    if isinstance(data, bytes):
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data.replace("\r\n", "\n").replace("\r", "\n")


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """Read one prompt per line from a UTF-8 text file.

    * lines are stripped of surrounding whitespace; the text inside a line is
      kept intact, however long it is;
    * blank (or whitespace-only) lines are skipped, with one ``UserWarning``
      giving their count;
    * a UTF-8 byte-order mark at the start is accepted and dropped.

    Raises :class:`PromptFileError` (a ``ValueError``) with a one-line message
    naming the file when it is missing, is a folder, can't be read, is empty,
    has only blank lines, or is not valid UTF-8 (the message then gives the line
    number and the byte offset within the file, and suggests re-encoding).
    """
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if os.path.isdir(name):
        raise PromptFileError(f"prompt file {name!r} is a directory, expected a text file with one prompt per line")
    if not os.path.exists(name):
        raise PromptFileError(f"prompt file {name!r} not found")
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PromptFileError(f"prompt file {name!r} can't be read: {e.strerror or e}") from None

    skip = len(_BOM) if data.startswith(_BOM) else 0
    body = data[skip:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        offset = skip + e.start  # offset in the file as stored, BOM included
        line = _normalise_newlines(data[:offset]).count(b"\n") + 1
        bad = body[e.start : e.start + 1]
        raise PromptFileError(
            f"prompt file {name!r} is not valid UTF-8: byte 0x{bad.hex()} at line {line} "
            f"(byte offset {offset}); re-encode it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 in.txt > out.txt`"
        ) from None

    text = _normalise_newlines(text)
    if not text.strip():
        what = "is empty" if not text else "contains only blank lines"
        raise PromptFileError(f"prompt file {name!r} {what}; expected one prompt per line")

    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()  # the final newline ends the last line; it doesn't start a new one
    prompts = [line.strip() for line in lines]
    blank = sum(1 for p in prompts if not p)
    if blank:
        warnings.warn(
            f"prompt file {name!r}: skipped {blank} blank line{'s' if blank != 1 else ''}",
            UserWarning,
            stacklevel=2,
        )
        prompts = [p for p in prompts if p]
    return prompts


class Schedule(list):
    """One video's prompts, ``[(prompt, start latent frame), ...]``, and the file line it came from."""

    def __init__(self, items, line: int):
        super().__init__(items)
        self.line = line


def read_prompt_schedule(path: str | os.PathLike) -> list[Schedule]:
    """``--prompt_schedule FILE.jsonl``: one video per line, each a JSON list of
    ``{"prompt": str, "start_frame": int}`` (latent frames; the first at 0, strictly increasing). Returns a
    :class:`Schedule` per line; blank lines are skipped. A line that breaks a rule is a
    one-line
    :class:`PromptFileError` naming ``file:line``; block boundaries are checked by ``check_schedule_blocks``
    once the config is known (still before any model loads)."""
    name = os.fspath(path)
    if os.path.isdir(name) or not os.path.exists(name):
        raise PromptFileError(f"--prompt_schedule {name!r}: {'is a folder' if os.path.isdir(name) else 'not found'}; "
                              "expected a JSONL file, one video per line")
    try:
        with open(name, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PromptFileError(f"--prompt_schedule {name!r} can't be read as UTF-8 text: {e}") from None
    schedules = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"--prompt_schedule {name}:{number}"
        try:
            items = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{where}: not JSON ({e.msg} at column {e.colno}); expected a list like "
                                  '[{"prompt": "...", "start_frame": 0}, ...]') from None
        if not isinstance(items, list) or not items:
            raise PromptFileError(f"{where}: expected a non-empty JSON list of {{\"prompt\", \"start_frame\"}} objects")
        schedule = []
        for item in items:
            if not isinstance(item, dict) or set(item) != {"prompt", "start_frame"}:
                raise PromptFileError(f"{where}: each entry must be an object with exactly the keys \"prompt\" and "
                                      f"\"start_frame\", got {json.dumps(item)[:80]}")
            prompt, start = item["prompt"], item["start_frame"]
            if not isinstance(prompt, str) or not prompt.strip():
                raise PromptFileError(f"{where}: empty prompt at start_frame {start}")
            if isinstance(start, bool) or not isinstance(start, int) or start < 0:
                raise PromptFileError(f"{where}: start_frame must be a non-negative integer (latent frames), got "
                                      f"{json.dumps(start)}")
            if not schedule and start != 0:
                raise PromptFileError(f"{where}: the first prompt must start at frame 0, not {start}")
            if schedule and start <= schedule[-1][1]:
                raise PromptFileError(f"{where}: start_frame {start} does not follow {schedule[-1][1]}: list the "
                                      "switches in increasing order")
            schedule.append((prompt.strip(), start))
        schedules.append(Schedule(schedule, number))
    if not schedules:
        raise PromptFileError(f"--prompt_schedule {name!r} holds no schedule; expected one JSON list per line")
    return schedules


def check_schedule_blocks(schedules, path, block_starts, num_frames: int) -> None:
    """Every switch on a block boundary (`block_starts`: the latent frames where blocks begin) and before the
    video's end (`num_frames` latent frames); else a one-line :class:`PromptFileError` naming the line."""
    starts = set(block_starts)
    for schedule in schedules:
        number = schedule.line
        for _, start in schedule:
            if start >= num_frames:
                raise PromptFileError(f"--prompt_schedule {path}:{number}: start_frame {start} is past the video's "
                                      f"end ({num_frames} latent frames; see --num_output_frames)")
            if start not in starts:
                nearest = min(starts, key=lambda s: abs(s - start))
                raise PromptFileError(f"--prompt_schedule {path}:{number}: start_frame {start} is not on a block "
                                      f"boundary (blocks start at {', '.join(map(str, sorted(starts)[:5]))}, ...; "
                                      f"nearest: {nearest})")


def shard_for_rank(items: Sequence[T], rank: int, world_size: int) -> list[tuple[int, T]]:
    """The items of one rank, as ``[(global_index, item), ...]``.

    Rank ``r`` gets the items at global indices ``r, r + world, r + 2*world, ...``
    (the strided order of ``DistributedSampler(shuffle=False)`` used by the
    original CausVid / Self-Forcing inference scripts to split prompts across
    torchrun ranks).  The global index is kept so outputs can be named without
    colliding across ranks: ``for idx, prompt in shard_for_rank(prompts, r, w)``.

    Unlike ``DistributedSampler`` nothing is padded: when ``len(items)`` is not a
    multiple of ``world_size`` the last ranks get one item fewer, and no prompt
    is generated twice.  A rank may get no items at all.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    return [(i, items[i]) for i in range(rank, len(items), world_size)]


class PromptDataset:
    """Prompts as a map-style dataset (what torch's DataLoader takes; no torch import, so the CLIs read prompt
    files before torch loads): item ``i`` is ``{"prompts": str, "idx": int}``.

    ``idx`` is the prompt's global index: by default its position in
    ``prompts``; pass ``indices`` to keep the global numbering of a shard, or
    build one directly with :meth:`from_shard`.
    """

    def __init__(self, prompts: Sequence[str], indices: Sequence[int] | None = None):
        if isinstance(prompts, (str, bytes)):
            raise TypeError(
                "PromptDataset expects a list of prompts, not a single string; "
                "use PromptDataset.from_file(path) to read a prompt file"
            )
        self.prompts = list(prompts)
        bad = [type(p).__name__ for p in self.prompts if not isinstance(p, str)]
        if bad:
            raise TypeError(f"PromptDataset: prompts must be str, got {bad[0]}")
        if indices is None:
            self.indices = list(range(len(self.prompts)))
        else:
            self.indices = [int(i) for i in indices]
            if len(self.indices) != len(self.prompts):
                raise ValueError(
                    f"PromptDataset: {len(self.indices)} indices for {len(self.prompts)} prompts"
                )

    @classmethod
    def from_shard(cls, pairs: Sequence[tuple[int, str]]) -> "PromptDataset":
        """From the ``[(global_index, prompt), ...]`` of :func:`shard_for_rank`."""
        pairs = list(pairs)
        return cls([p for _, p in pairs], indices=[i for i, _ in pairs])

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "PromptDataset":
        return cls(read_prompt_file(path))

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        return {"prompts": self.prompts[i], "idx": self.indices[i]}
