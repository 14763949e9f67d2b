"""The one reader of JSON input files: the parsed content, or one line that names the file and what is wrong
(missing, a folder, not JSON with the line and column, not UTF-8), raised as the caller's error type."""
import json
import os


def load_json(path, what: str = "", error: type = ValueError):
    """The parsed content of `path`. `what` names the file's role in messages ("clip list" -> "clip list a.json:
    file not found"; empty: "a.json: file not found"); `error` is the exception raised."""
    name = os.fspath(path)
    where = f"{what} {name}" if what else name
    if os.path.isdir(name):
        raise error(f"{where}: is a folder, expected a JSON file")
    try:
        with open(name, encoding="utf-8-sig") as f:  # -sig: files saved with a BOM are common on Windows
            return json.load(f)
    except FileNotFoundError:
        raise error(f"{where}: file not found") from None
    except json.JSONDecodeError as e:
        raise error(f"{where}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise error(f"{where}: not valid UTF-8 (byte offset {e.start})") from None
    except OSError as e:
        raise error(f"{where}: cannot read: {e.strerror or e}") from None
