"""Tests for distillation_data/merge_json.py (stdlib only; main() is called in-process)."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from repo_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "distillation_data" / "merge_json.py"
# distillation_data/ is a folder of scripts, not a package: load the file directly.
mj = load_script("distillation_data/merge_json.py")

# The README's examples, copied literally.
README_OBJ_1 = """{
  "video1": "path/to/video1.mp4",
  "video2": "path/to/video2.mp4"
}"""
README_OBJ_2 = """{
  "video2": "new/path/to/video2.mp4",
  "video3": "path/to/video3.mp4"
}"""
README_OBJ_OVERWRITE = """{
  "video1": "path/to/video1.mp4",
  "video2": "new/path/to/video2.mp4",
  "video3": "path/to/video3.mp4"
}"""
README_ARR_1 = """[
  {"id": "001", "path": "path/to/video1.mp4"},
  {"id": "002", "path": "path/to/video2.mp4"}
]"""
README_ARR_2 = """[
  {"id": "002", "path": "new/path/to/video2.mp4"},
  {"id": "003", "path": "path/to/video3.mp4"}
]"""
README_ARR_OVERWRITE = """[
  {"id": "001", "path": "path/to/video1.mp4"},
  {"id": "002", "path": "new/path/to/video2.mp4"},
  {"id": "003", "path": "path/to/video3.mp4"}
]"""


def run(tmp_path, text1, text2, *extra):
    """Write the two inputs, run main in-process; return (rc, output path)."""
    f1, f2, out = tmp_path / "file1.json", tmp_path / "file2.json", tmp_path / "merged.json"
    f1.write_text(text1, encoding="utf-8")
    f2.write_text(text2, encoding="utf-8")
    rc = mj.main(["--input1", str(f1), "--input2", str(f2), "--output", str(out), *extra])
    return rc, out


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


# --- the README examples ---------------------------------------------------------------------

def test_readme_object_example_exact_output(tmp_path, capsys):
    rc, out = run(tmp_path, README_OBJ_1, README_OBJ_2)  # overwrite is the default
    assert rc == 0
    # indent=2 reproduces the README's block byte for byte (plus a final newline).
    assert out.read_text(encoding="utf-8") == README_OBJ_OVERWRITE + "\n"
    stdout = capsys.readouterr().out
    assert "mode: overwrite" in stdout
    assert "conflicts: 1" in stdout
    assert "entries in result: 3" in stdout


def test_readme_array_example(tmp_path, capsys):
    rc, out = run(tmp_path, README_ARR_1, README_ARR_2, "--key_field", "id", "--mode", "overwrite")
    assert rc == 0
    assert load(out) == json.loads(README_ARR_OVERWRITE)
    stdout = capsys.readouterr().out
    assert "conflicts: 1" in stdout and "entries in result: 3" in stdout


@pytest.mark.parametrize("mode, expected", [
    ("keep", {"video1": "path/to/video1.mp4", "video2": "path/to/video2.mp4",
              "video3": "path/to/video3.mp4"}),
    ("append", {"video1": "path/to/video1.mp4", "video2": "path/to/video2.mp4",
                "video2_1": "new/path/to/video2.mp4", "video3": "path/to/video3.mp4"}),
])
def test_readme_object_example_other_modes(tmp_path, mode, expected):
    rc, out = run(tmp_path, README_OBJ_1, README_OBJ_2, "--mode", mode)
    assert rc == 0
    assert list(load(out).items()) == list(expected.items())  # order too, as documented


@pytest.mark.parametrize("mode, expected", [
    ("keep", [{"id": "001", "path": "path/to/video1.mp4"},
              {"id": "002", "path": "path/to/video2.mp4"},
              {"id": "003", "path": "path/to/video3.mp4"}]),
    ("append", [{"id": "001", "path": "path/to/video1.mp4"},
                {"id": "002", "path": "path/to/video2.mp4"},
                {"id": "002_1", "path": "new/path/to/video2.mp4"},
                {"id": "003", "path": "path/to/video3.mp4"}]),
])
def test_readme_array_example_other_modes(tmp_path, mode, expected):
    rc, out = run(tmp_path, README_ARR_1, README_ARR_2, "--key_field", "id", "--mode", mode)
    assert rc == 0
    assert load(out) == expected


# --- pure functions --------------------------------------------------------------------------

def test_merge_objects_modes_and_order():
    a, b = {"x": 1, "y": 2}, {"y": 20, "z": 30}
    a0, b0 = copy.deepcopy(a), copy.deepcopy(b)
    res, stats = mj.merge_objects(a, b, "overwrite")
    assert list(res.items()) == [("x", 1), ("y", 20), ("z", 30)]  # "y" keeps its position
    assert stats == {"input1": 2, "input2": 2, "conflicts": 1, "result": 3}
    assert mj.merge_objects(a, b, "keep")[0] == {"x": 1, "y": 2, "z": 30}
    assert mj.merge_objects(a, b, "append")[0] == {"x": 1, "y": 2, "y_1": 20, "z": 30}
    assert (a, b) == (a0, b0)  # inputs untouched


def test_append_object_suffix_skips_used_numbers():
    a = {"k": 1, "k_1": 2}
    res, stats = mj.merge_objects(a, {"k": 3}, "append")
    assert res == {"k": 1, "k_1": 2, "k_2": 3}
    # A suffix must not collide with a key the second input brings itself.
    res, _ = mj.merge_objects({"k": 1}, {"k": 2, "k_1": 3}, "append")
    assert res == {"k": 1, "k_2": 2, "k_1": 3}
    # Repeated conflicts on the same base count up.
    res, _ = mj.merge_objects({"k": 1, "k_1": 2}, {"k": 3, "k_1": 4}, "append")
    assert res == {"k": 1, "k_1": 2, "k_2": 3, "k_1_1": 4}


def test_merge_arrays_modes():
    a = [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]
    b = [{"id": 2, "v": "B"}, {"id": 3, "v": "c"}]
    a0, b0 = copy.deepcopy(a), copy.deepcopy(b)
    res, stats = mj.merge_arrays(a, b, "id", "overwrite")
    assert res == [{"id": 1, "v": "a"}, {"id": 2, "v": "B"}, {"id": 3, "v": "c"}]
    assert stats == {"input1": 2, "input2": 2, "conflicts": 1, "result": 3}
    assert mj.merge_arrays(a, b, "id", "keep")[0] == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"},
                                                      {"id": 3, "v": "c"}]
    # Non-string key values are suffixed through their JSON text.
    assert mj.merge_arrays(a, b, "id", "append")[0] == [
        {"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": "2_1", "v": "B"}, {"id": 3, "v": "c"}]
    assert (a, b) == (a0, b0)  # inputs untouched


def test_append_array_suffix_skips_used_numbers():
    a = [{"id": "x"}, {"id": "x_1"}]
    res, stats = mj.merge_arrays(a, [{"id": "x", "n": 2}], "id", "append")
    assert res == [{"id": "x"}, {"id": "x_1"}, {"id": "x_2", "n": 2}]
    assert stats["conflicts"] == 1


def test_array_keys_compared_by_json_value():
    # "2" and 2 (and 1 vs true) are different key values, not conflicts.
    res, stats = mj.merge_arrays([{"id": "2"}, {"id": 1}], [{"id": 2}, {"id": True}], "id")
    assert stats["conflicts"] == 0 and len(res) == 4


def test_duplicates_inside_one_array_are_deduplicated_too():
    a = [{"id": 1, "v": "first"}, {"id": 1, "v": "second"}]
    assert mj.merge_arrays(a, [], "id", "overwrite")[0] == [{"id": 1, "v": "second"}]
    assert mj.merge_arrays(a, [], "id", "keep")[0] == [{"id": 1, "v": "first"}]


# --- output encoding -------------------------------------------------------------------------

def test_unicode_preserved_in_output_bytes(tmp_path):
    rc, out = run(tmp_path, '{"视频1": "一只猫在草地上奔跑"}', '{"vidéo": "café ☕"}')
    assert rc == 0
    raw = out.read_bytes()
    assert "一只猫在草地上奔跑".encode("utf-8") in raw
    assert "café ☕".encode("utf-8") in raw
    assert b"\\u" not in raw  # no ASCII escapes


def test_utf8_bom_input_accepted(tmp_path):
    rc, out = run(tmp_path, "\ufeff" + README_OBJ_1, README_OBJ_2)
    assert rc == 0 and load(out)["video3"] == "path/to/video3.mp4"


# --- errors ----------------------------------------------------------------------------------

def assert_failed(rc, out, capsys, *fragments):
    """Non-zero exit, one-line message containing the fragments, and no output or temp file."""
    assert rc != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()
    assert not list(out.parent.glob(".merge_json.*"))


def test_error_missing_file(tmp_path, capsys):
    out = tmp_path / "merged.json"
    (tmp_path / "file2.json").write_text("{}")
    missing = tmp_path / "nope.json"
    rc = mj.main(["--input1", str(missing), "--input2", str(tmp_path / "file2.json"),
                  "--output", str(out)])
    assert_failed(rc, out, capsys, "nope.json", "not found")


def test_error_invalid_json_reports_line_and_column(tmp_path, capsys):
    rc, out = run(tmp_path, README_OBJ_1, '{\n  "a": 1\n  "b": 2\n}')
    assert_failed(rc, out, capsys, "file2.json", "invalid JSON", "line 3, column 3")


@pytest.mark.parametrize("text1, text2, fragments", [
    (README_OBJ_1, README_ARR_2, ["file1.json (an object)", "file2.json (an array)"]),
    (README_ARR_1, README_OBJ_2, ["file1.json (an array)", "file2.json (an object)"]),
])
def test_error_mismatched_types(tmp_path, capsys, text1, text2, fragments):
    rc, out = run(tmp_path, text1, text2, "--key_field", "id")
    assert_failed(rc, out, capsys, *fragments)


@pytest.mark.parametrize("scalar, kind", [("42", "a number"), ('"text"', "a string"),
                                          ("null", "null"), ("true", "a boolean")])
def test_error_top_level_scalar(tmp_path, capsys, scalar, kind):
    rc, out = run(tmp_path, scalar, README_OBJ_2)
    assert_failed(rc, out, capsys, "file1.json", f"top-level value is {kind}")


def test_error_array_without_key_field(tmp_path, capsys):
    rc, out = run(tmp_path, README_ARR_1, README_ARR_2)
    assert_failed(rc, out, capsys, "file1.json", "file2.json", "--key_field is required")


@pytest.mark.parametrize("bad_entry", ['{"path": "x.mp4"}', '"just a string"'])
def test_error_array_entry_without_key_field(tmp_path, capsys, bad_entry):
    rc, out = run(tmp_path, README_ARR_1, f'[{{"id": "009"}}, {bad_entry}]', "--key_field", "id")
    assert_failed(rc, out, capsys, "file2.json", "entry at index 1", "no key field 'id'")


def test_failure_leaves_existing_output_untouched(tmp_path, capsys):
    out = tmp_path / "merged.json"
    out.write_text("previous result")
    rc, _ = run(tmp_path, README_ARR_1, '[{"nokey": 1}]', "--key_field", "id")
    assert rc != 0
    assert out.read_text() == "previous result"
    assert not list(tmp_path.glob(".merge_json.*"))


def test_error_output_folder_missing(tmp_path, capsys):
    (tmp_path / "a.json").write_text(README_OBJ_1)
    (tmp_path / "b.json").write_text(README_OBJ_2)
    out = tmp_path / "no_such_dir" / "merged.json"
    rc = mj.main(["--input1", str(tmp_path / "a.json"), "--input2", str(tmp_path / "b.json"),
                  "--output", str(out)])
    assert_failed(rc, out, capsys, "merged.json", "cannot write output")


# --- the script itself -----------------------------------------------------------------------

def test_script_runs_as_subprocess(tmp_path):
    (tmp_path / "file1.json").write_text(README_ARR_1)
    (tmp_path / "file2.json").write_text(README_ARR_2)
    out = tmp_path / "merged.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--input1", str(tmp_path / "file1.json"),
         "--input2", str(tmp_path / "file2.json"), "--output", str(out), "--key_field", "id"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert load(out) == json.loads(README_ARR_OVERWRITE)
    assert "conflicts: 1" in proc.stdout

    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--input1", str(tmp_path / "missing.json"),
         "--input2", str(tmp_path / "file2.json"), "--output", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "missing.json: file not found" in proc.stderr
