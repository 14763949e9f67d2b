"""Download the MixKit tars of Open-Sora-Plan v1.1.0 and extract them.

Usage (the CausVid README's command):
    python distillation_data/download_mixkit.py --local_dir ./datasets \
        [--repo_id LanguageBind/Open-Sora-Plan-v1.1.0] [--folder_name all_mixkit] \
        [--workers 8] [--skip_download]

1. Download: huggingface_hub.snapshot_download(repo_id, repo_type="dataset",
   allow_patterns="<folder_name>/*.tar", local_dir=<local_dir>), i.e. the tars land in
   <local_dir>/<folder_name>/.  Files already complete are not fetched again, so an
   interrupted download is resumed by running the command again.  --skip_download uses
   the tars already there.
2. Extract every <local_dir>/<folder_name>/*.tar into <local_dir>/videos, --workers tars
   at a time (threads).  Members that would land outside that folder -- absolute paths,
   paths with "..", symbolic / hard links pointing outside it -- and device / fifo members
   are refused, each with a logged warning; the rest is extracted.  A tar extracted
   completely is marked by <local_dir>/videos/.<tar name>.done (it records the tar's
   size) and skipped on the next run; a tar whose extraction failed is retried.

Then flatten the folder with move_mixkit.py.  Exit code: 0, 1 when the download failed,
no tar was found or a tar could not be extracted, 2 for unusable arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

from causvid.errors import ArgumentParser

log = logging.getLogger("download_mixkit")

DEFAULT_REPO = "LanguageBind/Open-Sora-Plan-v1.1.0"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# the stdlib extraction filters exist from Python 3.12 (and in 3.10.12+ / 3.11.4+)
_FILTER_KW = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_FilterError = getattr(tarfile, "FilterError", ())


def download(repo_id: str, folder_name: str, local_dir: str, workers: int = 8) -> str:
    """Fetch ``<folder_name>/*.tar`` of the dataset repo into ``local_dir``; returns the tar folder."""
    from huggingface_hub import snapshot_download

    log.info("downloading %s/*.tar from dataset %s into %s", folder_name, repo_id, local_dir)
    snapshot_download(
        repo_id=repo_id,
        repo_type="dataset",
        allow_patterns=f"{folder_name}/*.tar",
        local_dir=local_dir,
        max_workers=max(1, workers),
    )
    return os.path.join(local_dir, folder_name)


# --------------------------------------------------------------------------- #
# extraction
# --------------------------------------------------------------------------- #


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _has_dotdot(name: str) -> bool:
    return ".." in name.replace("\\", "/").split("/")


def member_problem(member: tarfile.TarInfo, root: str) -> str | None:
    """Why ``member`` must not be extracted into ``root`` (a realpath), or None if it is safe."""
    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if _has_dotdot(name):
        return "'..' in the path"
    target = os.path.realpath(os.path.join(root, name))
    if not _inside(target, root):
        return "path leads outside the output folder"
    if member.issym():
        link = member.linkname
        if not link or link.startswith(("/", "\\")) or os.path.isabs(link):
            return f"symlink to an absolute path {link!r}"
        dest = os.path.realpath(os.path.join(os.path.dirname(target), link))
        if not _inside(dest, root):
            return f"symlink pointing outside the output folder ({link!r})"
    elif member.islnk():
        link = member.linkname
        if not link or link.startswith(("/", "\\")) or os.path.isabs(link) or _has_dotdot(link):
            return f"hard link to {link!r} outside the output folder"
        if not _inside(os.path.realpath(os.path.join(root, link)), root):
            return f"hard link pointing outside the output folder ({link!r})"
    elif not (member.isfile() or member.isdir()):
        return "device, fifo or other special file"
    return None


def _marker_path(out_dir: str, tar_path: str) -> str:
    return os.path.join(out_dir, f".{os.path.basename(tar_path)}.done")


def _is_done(out_dir: str, tar_path: str) -> bool:
    try:
        with open(_marker_path(out_dir, tar_path), encoding="utf-8") as f:
            info = json.load(f)
        return info.get("size") == os.path.getsize(tar_path)
    except (OSError, ValueError, AttributeError):
        return False


def extract_tar(tar_path: str, out_dir: str) -> dict:
    """Extract one tar safely into ``out_dir``; returns counts.  Raises on an unreadable tar."""
    root = os.path.realpath(out_dir)
    extracted = refused = 0
    with tarfile.open(tar_path, "r:*") as tar:
        for member in tar:
            problem = member_problem(member, root)
            if problem is None:
                try:
                    # parent folders first, race-free: tarfile's own "exists? else makedirs"
                    # fails when two tars extracted in parallel create the same folder
                    parent = os.path.dirname(os.path.join(root, member.name.rstrip("/")))
                    os.makedirs(parent, exist_ok=True)
                    tar.extract(member, root, **_FILTER_KW)
                    extracted += 1
                    continue
                except _FilterError as e:  # the stdlib filter's second opinion
                    problem = str(e)
            refused += 1
            log.warning("%s: refused member %r: %s", tar_path, member.name, problem)
    with open(_marker_path(out_dir, tar_path), "w", encoding="utf-8") as f:
        json.dump({"tar": os.path.basename(tar_path), "size": os.path.getsize(tar_path),
                   "members": extracted, "refused": refused}, f)
    return {"extracted": extracted, "refused": refused}


def find_tars(tar_dir: str) -> list[str]:
    return sorted(
        os.path.join(tar_dir, f)
        for f in os.listdir(tar_dir)
        if f.lower().endswith(TAR_SUFFIXES) and os.path.isfile(os.path.join(tar_dir, f))
    )


def extract_all(tar_dir: str, out_dir: str, workers: int = 4) -> dict:
    """Extract every tar of ``tar_dir`` into ``out_dir`` (``workers`` threads); returns a summary.

    Summary keys: ``tars``, ``extracted`` (tars), ``skipped`` (already done), ``failed``,
    ``members`` (files / folders written), ``refused`` (members refused).
    """
    os.makedirs(out_dir, exist_ok=True)
    tars = find_tars(tar_dir)
    todo = [t for t in tars if not _is_done(out_dir, t)]
    summary = {"tars": len(tars), "extracted": 0, "skipped": len(tars) - len(todo), "failed": 0, "members": 0, "refused": 0}
    for t in tars:
        if t not in todo:
            log.info("%s: already extracted, skipped", t)

    def one(tar_path):
        try:
            return tar_path, extract_tar(tar_path, out_dir), None
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            return tar_path, None, e

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(one, t) for t in todo]
        for fut in tqdm(as_completed(futures), total=len(futures), unit="tar", desc="extract", disable=None):
            tar_path, counts, err = fut.result()
            if err is not None:
                summary["failed"] += 1
                log.error("%s: cannot extract: %s", tar_path, str(err).splitlines()[0] if str(err) else type(err).__name__)
                continue
            summary["extracted"] += 1
            summary["members"] += counts["extracted"]
            summary["refused"] += counts["refused"]
    log.info(
        "%d tars in %s: %d extracted into %s, %d already done, %d failed; %d members written, %d refused",
        summary["tars"], tar_dir, summary["extracted"], out_dir, summary["skipped"], summary["failed"],
        summary["members"], summary["refused"],
    )
    return summary


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local_dir", required=True, help="download folder; videos are extracted to <local_dir>/videos")
    p.add_argument("--repo_id", default=DEFAULT_REPO, help="Hugging Face dataset repo")
    p.add_argument("--folder_name", default="all_mixkit", help="folder of the repo holding the tars")
    p.add_argument("--workers", type=int, default=8, help="parallel downloads / extractions")
    p.add_argument("--skip_download", action="store_true", help="only extract the tars already in <local_dir>/<folder_name>")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.workers < 1:
        print(f"download_mixkit.py: error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2

    tar_dir = os.path.join(args.local_dir, args.folder_name)
    if not args.skip_download:
        try:
            tar_dir = download(args.repo_id, args.folder_name, args.local_dir, args.workers)
        except Exception as e:  # network, auth, unknown repo...: one line, not a traceback
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"download_mixkit.py: error: download of {args.repo_id} ({args.folder_name}/*.tar) failed: {msg}",
                  file=sys.stderr)
            return 1
    if not os.path.isdir(tar_dir):
        print(f"download_mixkit.py: error: tar folder {tar_dir!r} does not exist", file=sys.stderr)
        return 1
    if not find_tars(tar_dir):
        print(f"download_mixkit.py: error: no .tar files in {tar_dir!r}", file=sys.stderr)
        return 1
    summary = extract_all(tar_dir, os.path.join(args.local_dir, "videos"), args.workers)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
