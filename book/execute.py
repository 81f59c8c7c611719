"""Execute every chapter of the book with papermill and stage the sources for jupyter-book.

    python book/execute.py --profile cpu            # all chapters, in _toc.yml order
    python book/execute.py --profile smoke --only 01_setup

Executed notebooks land in ``<build dir>/src/`` beside copies of ``_config.yml``, ``_toc.yml``
and the book's other files, so ``jupyter-book build <build dir>/src`` renders them without
re-executing. Models, results and figures go to the build directory: ``--build-dir``, else the
environment variable ``DDSS_BUILD_DIR``, else ``_build/`` at the repository root.

``--jobs N`` with the whole book first trains the models in N processes (:data:`PREPARE`), then
runs up to N chapters at once before the last (which reads every other chapter's results). The
kernels run with ``DDSS_PROGRESS=summary`` (one line per long loop instead of a progress bar in the
stored output) and share JAX's persistent compilation cache (``<build dir>/jax_cache``, unless
``JAX_COMPILATION_CACHE_DIR`` is set), and papermill's injected parameters are folded into the
chapter's own parameters cell, so a reader sees the values used once. A failing cell stops the
build with papermill's error.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def chapters(root: pathlib.Path = ROOT) -> list[str]:
    """The notebook chapters listed in ``_toc.yml``, as paths relative to the root, in order."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for c in toc.get("chapters", [])]
    return [f + ".ipynb" for f in files if (root / (f + ".ipynb")).is_file()]


def fold_parameters(path: pathlib.Path) -> None:
    """Replace the notebook's ``parameters`` cell by papermill's injected cell (the values used) and
    drop the injected cell, so the executed chapter shows its parameters once."""
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    tags = lambda c: c.get("metadata", {}).get("tags", [])
    injected = [i for i, c in enumerate(cells) if "injected-parameters" in tags(c)]
    params = [i for i, c in enumerate(cells) if "parameters" in tags(c)]
    if not injected or not params:
        return
    src = [line for line in cells[injected[0]]["source"] if not line.startswith("# Parameters")]
    cells[params[0]]["source"] = src
    del cells[injected[0]]
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


ENV_KEYS = ("DDSS_BUILD_DIR", "DDSS_PROGRESS", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")


def kernel_env(build_dir: pathlib.Path) -> None:
    """Set the environment the chapters' kernels inherit: the build directory, one-line progress
    summaries, and JAX's persistent compilation cache (chapters run in separate kernels that compile
    the same functions again; the cache is keyed by the program and the JAX version)."""
    os.environ["DDSS_BUILD_DIR"] = str(build_dir)
    os.environ.setdefault("DDSS_PROGRESS", "summary")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(build_dir / "jax_cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def execute(nb: str, out: pathlib.Path, *, profile: str, build_dir: pathlib.Path, seed: int = 0,
            restore_env: bool = True) -> float:
    """Run one chapter with papermill; returns its wall time in seconds. The environment of
    :func:`kernel_env` is set for the kernel and, with ``restore_env``, restored afterwards (``main``
    sets it once for a whole run instead, so chapters executed at once share it without a race)."""
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    kernel_env(build_dir)
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(str(ROOT / nb), str(out), parameters=dict(profile=profile, seed=seed),
                                   cwd=str(out.parent), kernel_name="python3", progress_bar=False,
                                   log_output=False)
    finally:
        for k, v in saved.items() if restore_env else ():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    fold_parameters(out)
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


# The chapters of the middle wave, longest first in the cpu profile (measured from a fresh clone on 2
# cores, two at a time, 2026-11-24: DDSS 788 s, distillation 768, baselines 366, PSLD 255, DP
# schedules and conjugate integrators 263 each); a chapter not listed runs after them, in _toc.yml
# order. Longest first, the short ones fill in at the end and the two processes finish close together.
LONGEST = ("03_ddss", "05_distillation", "02_baselines", "07_splitting_integrators", "04_dp_schedules",
           "06_conjugate_integrators")


def waves(nbs: list[str], *, prepared: bool = False) -> list[list[str]]:
    """The order of execution: the first chapter alone (it trains the models every later chapter
    loads), then the chapters in between (independent of each other: each reads only cached models and
    results of the first), then the last (the head-to-head chapter reads every other chapter's results).
    With ``prepared`` (:func:`prepare` has trained and cached those models) the first chapter has
    nothing left to train and runs with the chapters in between."""
    if len(nbs) <= 2:
        return [[nb] for nb in nbs]
    middle = nbs[:-1] if prepared else nbs[1:-1]
    first = [nb for nb in middle if pathlib.Path(nb).stem in LONGEST]   # started first: the
    rest = [nb for nb in middle if nb not in first]                     # wave ends sooner
    ordered = sorted(first, key=lambda nb: LONGEST.index(pathlib.Path(nb).stem)) + rest
    return ([] if prepared else [nbs[:1]]) + [ordered, nbs[-1:]]


# What the chapters train or draw once and later chapters load from the cache (keyed by the same
# configs the chapters use), split into two lists that run in parallel before the first chapter
# when the whole book is executed: chapter 1 then finds its models trained and chapter 7 its PSLD
# models. The results are the same; only the wall time changes.
PREPARE = (
    "toy = pretrained.toy_model(P, dataset='checkerboard', seed=seed)\n"
    "evaluation.many_step_samples(toy, P, seed=seed)\n"
    "psld.image_model(P, seed=seed)\n",
    "model = pretrained.image_model(P, seed=seed)\n"
    "pretrained.image_classifiers(P)\n"
    "evaluation.many_step_samples(model, P, seed=seed)\n"
    "psld.toy_model(P, seed=seed, steps=P.psld_toy_steps)\n",
)


def prepare(profile: str, seed: int, jobs: int) -> float:
    """Run :data:`PREPARE` (``jobs`` lists at once, each in its own Python process); seconds taken."""
    head = ("from ddss_lite import evaluation, pretrained, psld\n"
            "from ddss_lite.profiles import get_profile\n"
            f"P, seed = get_profile({profile!r}), {seed}\n")
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = [pool.submit(subprocess.run, [sys.executable, "-c", head + code], cwd=ROOT) for code in PREPARE]
        failed = [r.result().returncode for r in runs if r.result().returncode != 0]
    if failed:
        raise SystemExit(f"preparing the models failed (exit codes {failed}); see the output above")
    return time.perf_counter() - t0


def default_build_dir() -> pathlib.Path:
    env = os.environ.get("DDSS_BUILD_DIR")
    return pathlib.Path(env) if env else ROOT / "_build"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="chapter names (e.g. 01_setup) to run; default all")
    ap.add_argument("--build-dir", default=None, help="default: $DDSS_BUILD_DIR, else _build/ at the root")
    ap.add_argument("--jobs", type=int, default=1, help="chapters executed at once within a wave (default 1)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from ddss_lite.profiles import PROFILES

    if args.profile not in PROFILES:          # before staging or starting a kernel
        ap.error(f"--profile must be one of {list(PROFILES)}, got {args.profile!r}")
    names = [pathlib.Path(nb).stem for nb in chapters()]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        ap.error(f"--only names chapters that do not exist: {unknown}; the chapters are {names}")
    build_dir = (pathlib.Path(args.build_dir) if args.build_dir else default_build_dir()).resolve()
    src_dir = build_dir / "src"
    stage(src_dir)
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    todo = [nb for nb in chapters() if args.only is None or pathlib.Path(nb).stem in args.only]
    times, t0 = {}, time.perf_counter()

    kernel_env(build_dir)              # once, for every kernel of the run
    if args.only is None and args.jobs > 1:
        print(f"training the models in {args.jobs} processes ...", flush=True)
        times["prepare"] = prepare(args.profile, args.seed, args.jobs)
        print(f"  models ready in {times['prepare']:.0f} s", flush=True)

    def run(nb):
        print(f"executing {nb} (profile {args.profile}) ...", flush=True)
        times[nb] = execute(nb, src_dir / nb, profile=args.profile, build_dir=build_dir, seed=args.seed,
                            restore_env=False)
        print(f"  {nb} done in {times[nb]:.0f} s", flush=True)

    for wave in waves(todo, prepared="prepare" in times):
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for future in [pool.submit(run, nb) for nb in wave]:
                future.result()            # re-raises a chapter's failure
    print(f"executed {len(times)} chapters in {time.perf_counter() - t0:.0f} s "
          f"(chapter times add up to {sum(times.values()):.0f} s)", flush=True)
    (build_dir / "results").mkdir(parents=True, exist_ok=True)
    (build_dir / "results" / f"chapter_seconds_{args.profile}.json").write_text(
        json.dumps({pathlib.Path(k).stem: round(v, 1) for k, v in times.items()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
