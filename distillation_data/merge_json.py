"""Merge two JSON annotation files (two objects or two arrays) into one.

Usage:
    python distillation_data/merge_json.py --input1 A.json --input2 B.json --output C.json \
        [--mode overwrite|keep|append] [--key_field FIELD]

Modes, for a key found in both inputs (for arrays: an entry whose --key_field value is
already in the result):
    overwrite (default)  the second value replaces the first, in the first one's position
    keep                 the first value stays, the second is dropped
    append               the first value stays, the second is added under `key_N`, N being
                         the smallest N >= 1 that is not already used

See docs/merge_json.md for the details and examples.
"""
import json
import sys

from causvid.errors import ArgumentParser
from causvid.jsonfile import load_json
from causvid.runtime import write_text_atomic

MODES = ("overwrite", "keep", "append")


class MergeError(Exception):
    """A problem with the inputs, reported as one line and a non-zero exit code."""


def _suffixed(key, taken):
    """First `key_N` (N = 1, 2, ...) not in `taken`."""
    n = 1
    while f"{key}_{n}" in taken:
        n += 1
    return f"{key}_{n}"


def merge_objects(a, b, mode="overwrite"):
    """Merge dict `b` into a copy of dict `a`; return (result, stats). Inputs are not modified."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    result = dict(a)
    # Suffixes must avoid every key of both inputs, not only the ones merged so far: otherwise
    # b = {"k": .., "k_1": ..} would rename "k" to "k_1" and then collide with b's own "k_1".
    taken = set(a) | set(b)
    conflicts = 0
    for key, value in b.items():
        if key not in a:
            result[key] = value
            continue
        conflicts += 1
        if mode == "overwrite":
            result[key] = value  # dict assignment keeps the key's original position
        elif mode == "append":
            new_key = _suffixed(key, taken)
            taken.add(new_key)
            result[new_key] = value
        # keep: nothing to do
    stats = {"input1": len(a), "input2": len(b), "conflicts": conflicts, "result": len(result)}
    return result, stats


def _key_of(entry, key_field, source, index):
    if not isinstance(entry, dict) or key_field not in entry:
        raise MergeError(f"{source}: array entry at index {index} has no key field {key_field!r}")
    return entry[key_field]


def _ident(value):
    # JSON text as identity: hashable for any JSON value, and keeps "2", 2, 2.0 and true apart
    # (Python would treat 1 == 1.0 == True as the same dict key).
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def merge_arrays(a, b, key_field, mode="overwrite", names=("input1", "input2")):
    """Merge two arrays of objects, deduplicated by `key_field`; return (result, stats).

    Entries are taken in order, first all of `a`, then all of `b`; an entry whose key value is
    already in the result is a conflict, resolved by `mode` (so duplicates inside one input are
    handled the same way as duplicates across inputs). `names` label the inputs in errors.
    Inputs are not modified.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    tagged = [(names[0], i, e) for i, e in enumerate(a)] + [(names[1], i, e) for i, e in enumerate(b)]
    # Check every entry first so a bad entry fails before any work, and so append-mode suffixes
    # can avoid all key values present anywhere in the inputs.
    keys = [_key_of(entry, key_field, src, i) for src, i, entry in tagged]
    # Names a suffix must avoid; non-string keys count by their JSON text (2 -> "2"), which can
    # only make the choice more conservative.
    taken = {k if isinstance(k, str) else _ident(k) for k in keys}
    result, position, conflicts = [], {}, 0
    for (_, _, entry), key in zip(tagged, keys):
        ident = _ident(key)
        if ident not in position:
            position[ident] = len(result)
            result.append(entry)
            continue
        conflicts += 1
        if mode == "overwrite":
            result[position[ident]] = entry  # replaced in place, as in the README example
        elif mode == "append":
            # Non-string key values are suffixed via their JSON text: 2 -> "2_1".
            base = key if isinstance(key, str) else _ident(key)
            new_key = _suffixed(base, taken)
            taken.add(new_key)
            position[_ident(new_key)] = len(result)
            result.append({**entry, key_field: new_key})
    stats = {"input1": len(a), "input2": len(b), "conflicts": conflicts, "result": len(result)}
    return result, stats


def _load(path):
    data = load_json(path, error=MergeError)
    if not isinstance(data, (dict, list)):
        raise MergeError(f"{path}: top-level value is {_kind(data)}; expected an object or an array")
    return data


def _kind(value):
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string"}.get(type(value), "a number")


def _write_atomic(path, data):
    """Write via a temp file in the same folder and os.replace, so a failure never leaves a
    partial output and an existing output is only replaced by a complete one."""
    try:
        write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    except OSError as e:
        raise MergeError(f"{path}: cannot write output: {e.strerror or e}") from None


def _parse_args(argv):
    p = ArgumentParser(description="Merge two JSON files (two objects or two arrays).")
    p.add_argument("--input1", required=True, help="first JSON file")
    p.add_argument("--input2", required=True, help="second JSON file")
    p.add_argument("--output", required=True, help="merged JSON file to write")
    p.add_argument("--mode", choices=MODES, default="overwrite",
                   help="conflict handling (default: overwrite)")
    p.add_argument("--key_field", help="field identifying array entries (required for arrays)")
    return p.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    try:
        a, b = _load(args.input1), _load(args.input2)
        if type(a) is not type(b):
            raise MergeError(f"cannot merge {args.input1} ({_kind(a)}) with {args.input2} ({_kind(b)}): "
                             "both must be objects or both arrays")
        if isinstance(a, dict):
            result, stats = merge_objects(a, b, args.mode)  # --key_field is irrelevant for objects
        else:
            if not args.key_field:
                raise MergeError(f"{args.input1} and {args.input2} are arrays: --key_field is required")
            result, stats = merge_arrays(a, b, args.key_field, args.mode, (args.input1, args.input2))
        _write_atomic(args.output, result)
    except MergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Merged {args.input1} + {args.input2} -> {args.output} (mode: {args.mode})")
    print(f"  entries in {args.input1}: {stats['input1']}")
    print(f"  entries in {args.input2}: {stats['input2']}")
    print(f"  conflicts: {stats['conflicts']}")
    print(f"  entries in result: {stats['result']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
