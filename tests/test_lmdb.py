"""LMDB latent stores: published key layout, resume, merge, datasets and the distributed loader."""
import os
import signal
import subprocess
import sys
import textwrap

import lmdb
import numpy as np
import pytest
import torch

from causvid.data.datasets import (
    LatentLMDBDataset,
    ODERegressionLMDBDataset,
)
from causvid.data.lmdb import (
    LatentLMDBWriter,
    LMDBDataError,
    create_lmdb_from_pt,
    merge_lmdbs,
    read_lmdb_meta,
    read_row,
)
from causvid.data.lmdb import layout as lmdb_layout
from causvid.ode_data import create_lmdb_iterative, merge_lmdb

ROW = (3, 2, 4, 3, 5)  # (S, F, C, H, W): small stand-in for (4|6, 21, 16, 60, 104)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prompt_of(i):
    return f"prompt {i}: a cat — 猫 {i}"


def write_pt_files(folder, ids, shape=(1, *ROW), per_file=1, seed=0):
    """Files {k:05d}.pt holding `per_file` prompts each; returns {prompt: fp32 tensor}.

    The tensor of id i depends only on (seed, i), so the same id gives the same tensor in every folder.
    """
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for k in range(0, len(ids), per_file):
        d = {}
        for i in ids[k : k + per_file]:
            t = torch.randn(shape, generator=torch.Generator().manual_seed(1000 * seed + i)) * 3
            d[prompt_of(i)] = t
            tensors.setdefault(prompt_of(i), t)
        torch.save(d, os.path.join(folder, f"{ids[k]:05d}.pt"))
    return tensors


def dump(path):
    """Every key/value of an LMDB."""
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        out = {bytes(k): bytes(v) for k, v in txn.cursor()}
    env.close()
    return out


def create(data, db, **kw):
    return create_lmdb_from_pt(data, db, progress=False, **kw)


def merge(sources, target, **kw):
    return merge_lmdbs(sources, target, progress=False, **kw)


# ----------------------------------------------------------------------------- layout and round trip


def test_round_trip_in_published_key_layout(tmp_path):
    tensors = write_pt_files(tmp_path / "pt", list(range(5)), per_file=2)  # files of 2, 2 and 1 prompts
    stats = create(tmp_path / "pt", tmp_path / "db")
    assert stats["written"] == 5 and stats["num_rows"] == 5 and stats["row_shape"] == ROW

    raw = dump(tmp_path / "db")
    expected_keys = {b"latents_shape", b"prompts_shape"}
    expected_keys |= {f"latents_{i}_data".encode() for i in range(5)} | {f"prompts_{i}_data".encode() for i in range(5)}
    assert set(raw) == expected_keys
    assert raw[b"latents_shape"] == b"5 3 2 4 3 5"
    assert raw[b"prompts_shape"] == b"5"
    for i, (prompt, t) in enumerate(tensors.items()):  # rows in file order, then dict order
        assert raw[f"prompts_{i}_data".encode()] == prompt.encode("utf-8")
        assert raw[f"latents_{i}_data".encode()] == t[0].half().numpy().tobytes()

    assert read_lmdb_meta(tmp_path / "db") == (5, ROW)
    env = lmdb.open(str(tmp_path / "db"), readonly=True, lock=False)
    with env.begin() as txn:
        row, prompt = read_row(txn, 3, ROW)
    assert prompt == prompt_of(3) and row.dtype == np.float16
    np.testing.assert_array_equal(row, tensors[prompt_of(3)][0].half().numpy())
    assert read_row(env, 0, ROW)[1] == prompt_of(0)
    env.close()


def test_vae_latents_are_stored_as_n_f_c_h_w(tmp_path):
    tensors = write_pt_files(tmp_path / "pt", [0, 1], shape=(1, *ROW[1:]))
    create(tmp_path / "pt", tmp_path / "db")
    raw = dump(tmp_path / "db")
    assert raw[b"latents_shape"] == b"2 2 4 3 5"
    assert raw[b"latents_1_data"] == tensors[prompt_of(1)][0].half().numpy().tobytes()


def test_values_without_batch_dim_are_stored_as_they_are(tmp_path):
    write_pt_files(tmp_path / "pt", [0, 1], shape=ROW)
    create(tmp_path / "pt", tmp_path / "db")
    assert read_lmdb_meta(tmp_path / "db") == (2, ROW)


# ----------------------------------------------------------------------------- checks


def test_row_of_a_wrong_shape_is_rejected(tmp_path):
    with LatentLMDBWriter(tmp_path / "db") as w:
        w.append(torch.zeros(ROW), "first")
        with pytest.raises(LMDBDataError, match=r"row 1 \(prompt 'odd one'\) has shape \(3, 2, 4, 3, 6\).*\(3, 2, 4, 3, 5\)"):
            w.append(torch.zeros(3, 2, 4, 3, 6), "odd one")
    # a resumed writer knows the shape from the database
    with LatentLMDBWriter(tmp_path / "db") as w:
        with pytest.raises(LMDBDataError, match="has shape"):
            w.append(np.zeros((2, 2, 4, 3, 5), np.float32), "other")
    assert read_lmdb_meta(tmp_path / "db") == (1, ROW)


def test_create_names_the_file_with_a_wrong_shape(tmp_path):
    write_pt_files(tmp_path / "pt", [0, 1])
    torch.save({"bad": torch.zeros(1, 3, 2, 4, 3, 7)}, tmp_path / "pt" / "00002.pt")
    with pytest.raises(LMDBDataError, match=r"00002\.pt: row 2 \(prompt 'bad'\)"):
        create(tmp_path / "pt", tmp_path / "db")
    torch.save([1, 2], tmp_path / "pt" / "00002.pt")
    with pytest.raises(LMDBDataError, match=r"00002\.pt: expected a \{prompt: tensor\} dict, got list"):
        create(tmp_path / "pt", tmp_path / "db2")


def test_duplicate_prompts_are_dropped_first_wins(tmp_path):
    first = write_pt_files(tmp_path / "pt", [0, 1, 2], seed=0)
    torch.save({prompt_of(1): torch.ones(1, *ROW), "new": torch.ones(1, *ROW)}, tmp_path / "pt" / "00009.pt")
    stats = create(tmp_path / "pt", tmp_path / "db")
    assert (stats["written"], stats["skipped"], stats["num_rows"]) == (4, 1, 4)
    raw = dump(tmp_path / "db")
    assert raw[b"latents_1_data"] == first[prompt_of(1)][0].half().numpy().tobytes()
    assert raw[b"prompts_3_data"] == b"new"
    with LatentLMDBWriter(tmp_path / "db") as w:  # also across runs
        assert prompt_of(2) in w
        assert w.append(torch.zeros(ROW), prompt_of(2)) is False
        assert w.append(torch.zeros(ROW), "newer") is True
    assert read_lmdb_meta(tmp_path / "db")[0] == 5


# ----------------------------------------------------------------------------- resume


def test_killed_create_resumes_to_the_same_database(tmp_path):
    write_pt_files(tmp_path / "pt", list(range(12)))
    create(tmp_path / "pt", tmp_path / "clean", commit_every=2)

    # the run kills itself (SIGKILL: no cleanup, as a crash) when it starts loading the 7th file, a known point
    script = textwrap.dedent(
        f"""
        import os, signal
        import causvid.data.lmdb.convert as m
        load, loaded = m._load_pt, []
        def load_then_die(path):
            loaded.append(path)
            if len(loaded) == 7:
                os.kill(os.getpid(), signal.SIGKILL)
            return load(path)
        m._load_pt = load_then_die
        m.create_lmdb_from_pt({str(tmp_path / "pt")!r}, {str(tmp_path / "db")!r}, commit_every=2, progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO)
    assert proc.returncode == -signal.SIGKILL

    killed_rows = read_lmdb_meta(tmp_path / "db")[0]
    assert killed_rows == 6  # files 0-5 were stored in three whole commits
    assert set(dump(tmp_path / "db")).issuperset({f"latents_{i}_data".encode() for i in range(killed_rows)})

    stats = create(tmp_path / "pt", tmp_path / "db", commit_every=2)
    assert stats["skipped"] == killed_rows
    assert dump(tmp_path / "db") == dump(tmp_path / "clean")


def test_abandoned_writer_keeps_committed_rows_and_resumes(tmp_path):
    rows = [torch.randn(ROW) for _ in range(5)]
    w = LatentLMDBWriter(tmp_path / "db", commit_every=2)
    for i in range(3):
        w.append(rows[i], f"p{i}")
    w.env.close()  # crash: row 2 was never committed
    assert read_lmdb_meta(tmp_path / "db") == (2, ROW)
    with LatentLMDBWriter(tmp_path / "db", commit_every=2) as w:
        assert w.num_rows == 2
        for i in range(5):
            w.append(rows[i], f"p{i}")
    with LatentLMDBWriter(tmp_path / "clean", commit_every=2) as w:
        for i in range(5):
            w.append(rows[i], f"p{i}")
    assert dump(tmp_path / "db") == dump(tmp_path / "clean")


def test_map_grows_from_a_tiny_map(tmp_path):
    rows = [np.random.default_rng(i).standard_normal((8, 32, 32)).astype(np.float32) for i in range(20)]  # 16 KiB each
    with LatentLMDBWriter(tmp_path / "db", map_size=64 << 10, commit_every=3) as w:
        for i, r in enumerate(rows):
            w.append(r, f"p{i}")
        grown = w.env.info()["map_size"]
    assert grown > 64 << 10
    env = lmdb.open(str(tmp_path / "db"), readonly=True, lock=False)
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(read_row(env, i, (8, 32, 32))[0], r.astype(np.float16))
    env.close()


# ----------------------------------------------------------------------------- merge


def make_shards(tmp_path, groups):
    """One LMDB per group of ids, named shard_{k}; returns (paths, single LMDB of everything)."""
    paths = []
    for k, ids in groups.items():
        write_pt_files(tmp_path / f"pt_{k}", ids, seed=0)
        write_pt_files(tmp_path / "pt_all", ids, seed=0)
        create(tmp_path / f"pt_{k}", tmp_path / f"shard_{k}")
        paths.append(str(tmp_path / f"shard_{k}"))
    create(tmp_path / "pt_all", tmp_path / "all")
    return paths, tmp_path / "all"


def test_merge_equals_one_lmdb_of_everything(tmp_path):
    # id 3 is in two shards, and is kept once as in a single run
    paths, single = make_shards(tmp_path, {1: [0, 1, 2], 2: [3, 4], 10: [5, 3, 6]})
    stats = merge(paths, tmp_path / "merged", commit_every=2)
    assert (stats["written"], stats["skipped"], stats["num_rows"]) == (7, 1, 7)
    assert dump(tmp_path / "merged") == dump(single)
    assert all(os.path.isdir(p) for p in paths)  # kept unless asked


def test_merge_cli_glob_is_natural_order_and_deletes_on_request(tmp_path, capsys):
    paths, single = make_shards(tmp_path, {1: [0, 1], 2: [2, 3], 10: [4, 5]})
    target = tmp_path / "shard"  # the glob shard_* must not pick the target up
    assert merge_lmdb.main(["--source_glob", str(tmp_path / "shard_*"), "--target", str(target)]) == 0
    assert dump(target) == dump(single)
    assert all(os.path.isdir(p) for p in paths)
    assert merge_lmdb.main(["--sources", *paths, "--target", str(tmp_path / "m2"), "--delete_sources"]) == 0
    assert not any(os.path.exists(p) for p in paths)
    assert dump(tmp_path / "m2") == dump(single)
    assert "deleted 3 source LMDBs" in capsys.readouterr().out


def test_keep_slot_gives_clean_data(tmp_path):
    tensors = write_pt_files(tmp_path / "pt", [0, 1, 2])
    create(tmp_path / "pt", tmp_path / "ode")
    merge([tmp_path / "ode"], tmp_path / "clean", keep_slot=-1)
    raw = dump(tmp_path / "clean")
    assert raw[b"latents_shape"] == b"3 1 2 4 3 5"  # published clean_data: N 1 21 16 60 104
    for i, t in enumerate(tensors.values()):
        assert raw[f"latents_{i}_data".encode()] == t[0, -1:].half().numpy().tobytes()
    ds = LatentLMDBDataset(tmp_path / "clean")
    item = ds[2]
    assert item["clean_latent"].shape == ROW[1:] and item["ode_latent"].shape == (1, *ROW[1:])
    torch.testing.assert_close(item["clean_latent"], tensors[prompt_of(2)][0, -1].half().float())


def test_merge_errors_keep_sources(tmp_path):
    write_pt_files(tmp_path / "a", [0])
    write_pt_files(tmp_path / "b", [1], shape=(1, 4, 2, 4, 3, 5))
    create(tmp_path / "a", tmp_path / "A")
    create(tmp_path / "b", tmp_path / "B")
    with pytest.raises(LMDBDataError, match=r"rows of .*B have shape \(4, 2, 4, 3, 5\), rows of .*A have shape \(3, 2, 4, 3, 5\)"):
        merge([tmp_path / "A", tmp_path / "B"], tmp_path / "T", delete_sources=True)
    assert os.path.isdir(tmp_path / "A") and os.path.isdir(tmp_path / "B")
    write_pt_files(tmp_path / "v", [2], shape=(1, *ROW[1:]))
    create(tmp_path / "v", tmp_path / "V")
    with pytest.raises(LMDBDataError, match="keep_slot needs rows of shape"):
        merge([tmp_path / "V"], tmp_path / "T2", keep_slot=-1)
    with pytest.raises(LMDBDataError, match="is \\(inside\\) the source"):
        merge([tmp_path / "A"], tmp_path / "A")


def test_interrupted_merge_resumes(tmp_path):
    paths, single = make_shards(tmp_path, {0: [0, 1, 2], 1: [3, 4, 5]})
    merge(paths[:1], tmp_path / "merged")  # as if killed after the first shard
    stats = merge(paths, tmp_path / "merged")
    assert (stats["written"], stats["skipped"]) == (3, 3)
    assert dump(tmp_path / "merged") == dump(single)


# ----------------------------------------------------------------------------- CLIs


def test_create_cli(tmp_path, capsys):
    write_pt_files(tmp_path / "pt", [0, 1, 2])
    assert create_lmdb_iterative.main(["--data_path", str(tmp_path / "pt"), "--lmdb_path", str(tmp_path / "db")]) == 0
    assert "3 rows written" in capsys.readouterr().out
    assert create_lmdb_iterative.main(["--data_path", str(tmp_path / "nope"), "--lmdb_path", str(tmp_path / "db")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --data_path") and err.count("\n") == 1


# ----------------------------------------------------------------------------- datasets


def test_ode_dataset_keys_shapes_dtypes(tmp_path):
    tensors = write_pt_files(tmp_path / "pt", [0, 1, 2])
    create(tmp_path / "pt", tmp_path / "db")
    ds = ODERegressionLMDBDataset(tmp_path / "db")
    assert len(ds) == 3 and os.path.realpath(tmp_path / "db") not in lmdb_layout._SHARED  # opened lazily
    item = ds[1]
    assert set(item) == {"prompts", "ode_latent"} and item["prompts"] == prompt_of(1)
    assert item["ode_latent"].dtype == torch.float32 and item["ode_latent"].shape == ROW
    torch.testing.assert_close(item["ode_latent"], tensors[prompt_of(1)][0].half().float())
    assert len(ODERegressionLMDBDataset(tmp_path / "db", max_pair=2)) == 2
    with pytest.raises(IndexError):
        ds[3]

    latent = LatentLMDBDataset(tmp_path / "db")[0]
    assert set(latent) == {"prompts", "clean_latent", "ode_latent"}
    assert latent["clean_latent"].shape == ROW[1:] and latent["clean_latent"].dtype == torch.float32
    torch.testing.assert_close(latent["clean_latent"], tensors[prompt_of(0)][0, -1].half().float())


def test_vae_latent_rows_get_a_slot_dim(tmp_path):
    write_pt_files(tmp_path / "pt", [0, 1], shape=(1, *ROW[1:]))
    create(tmp_path / "pt", tmp_path / "db")
    assert ODERegressionLMDBDataset(tmp_path / "db")[0]["ode_latent"].shape == (1, *ROW[1:])
    assert LatentLMDBDataset(tmp_path / "db")[0]["clean_latent"].shape == ROW[1:]


def test_dataset_in_worker_processes(tmp_path):
    write_pt_files(tmp_path / "pt", list(range(6)))
    create(tmp_path / "pt", tmp_path / "db")
    ds = ODERegressionLMDBDataset(tmp_path / "db")
    ds[0]  # the parent opens its env before the workers fork
    ODERegressionLMDBDataset(tmp_path / "db")[1]  # a second dataset on the same LMDB shares the handle
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    it = iter(loader)
    batches = [next(it) for _ in range(2)]
    del it
    assert batches[0]["ode_latent"].shape == (3, *ROW)
    assert sorted(p for b in batches for p in b["prompts"]) == sorted(prompt_of(i) for i in range(6))
