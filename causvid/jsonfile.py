"""Reading a JSON input file with one-line errors that name it (missing, a folder, not JSON, not UTF-8)."""
import json
import os


def load_json(path, what: str, error: type = ValueError):
    """The parsed content of `path`; `what` names the file's role in messages ("clip list", "crop info")."""
    name = os.fspath(path)
    if os.path.isdir(name):
        raise error(f"{what} {name!r} is a directory, expected a JSON file")
    try:
        with open(name, encoding="utf-8-sig") as f:  # -sig: files saved with a BOM are common on Windows
            return json.load(f)
    except FileNotFoundError:
        raise error(f"{what} {name!r} not found") from None
    except json.JSONDecodeError as e:
        raise error(f"{what} {name!r} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {name!r} is not valid UTF-8 (byte offset {e.start})") from None
    except OSError as e:
        raise error(f"{what} {name!r} can't be read: {e.strerror or e}") from None
