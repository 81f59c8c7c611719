"""Execute every chapter of the book with papermill and stage the sources for jupyter-book.

    python book/execute.py --profile cpu            # all chapters, in _toc.yml order
    python book/execute.py --profile smoke --only 01_setup

Executed notebooks land in ``_build/src/`` beside copies of ``_config.yml``, ``_toc.yml``
and the book's other files, so ``jupyter-book build _build/src`` renders them without
re-executing. Models, results and figures go to ``_build/`` (``DDSS_BUILD_DIR``).
A failing cell stops the build with papermill's error.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import time

import papermill
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def chapters(root: pathlib.Path = ROOT) -> list[str]:
    """The notebook chapters listed in ``_toc.yml``, as paths relative to the root, in order."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for c in toc.get("chapters", [])]
    return [f + ".ipynb" for f in files if (root / (f + ".ipynb")).is_file()]


def execute(nb: str, out: pathlib.Path, *, profile: str, build_dir: pathlib.Path, seed: int = 0) -> float:
    """Run one chapter with papermill; returns its wall time in seconds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    env_before = os.environ.get("DDSS_BUILD_DIR")
    os.environ["DDSS_BUILD_DIR"] = str(build_dir)
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(str(ROOT / nb), str(out), parameters=dict(profile=profile, seed=seed),
                                   cwd=str(out.parent), kernel_name="python3", progress_bar=False,
                                   log_output=False)
    finally:
        if env_before is None:
            os.environ.pop("DDSS_BUILD_DIR", None)
        else:
            os.environ["DDSS_BUILD_DIR"] = env_before
    return time.perf_counter() - t0


def stage(src_dir: pathlib.Path) -> None:
    """Copy the book's non-notebook sources next to the executed notebooks."""
    src_dir.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, src_dir / name)
    for f in (ROOT / "book").iterdir():
        if f.suffix in {".md", ".bib", ".png", ".svg"}:
            (src_dir / "book").mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, src_dir / "book" / f.name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="chapter names (e.g. 01_setup) to run; default all")
    ap.add_argument("--build-dir", default=str(ROOT / "_build"))
    args = ap.parse_args(argv)
    build_dir = pathlib.Path(args.build_dir).resolve()
    src_dir = build_dir / "src"
    stage(src_dir)
    times = {}
    for nb in chapters():
        if args.only and pathlib.Path(nb).stem not in args.only:
            continue
        print(f"executing {nb} (profile {args.profile}) ...", flush=True)
        times[nb] = execute(nb, src_dir / nb, profile=args.profile, build_dir=build_dir, seed=args.seed)
        print(f"  done in {times[nb]:.0f} s", flush=True)
    print(f"executed {len(times)} chapters in {sum(times.values()):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
