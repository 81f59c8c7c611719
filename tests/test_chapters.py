"""Every chapter listed in _toc.yml executes in the smoke profile with papermill, without a cell error.

``make test`` builds the smoke book first (``book/execute.py --profile smoke``) and points
``DDSS_SMOKE_BUILD`` at it, so the chapters are executed once and checked here; without it (a
plain ``pytest``) each chapter is executed by its test.
"""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("book_execute", ROOT / "book" / "execute.py")
book_execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(book_execute)

CHAPTERS = book_execute.chapters()
SMOKE_BUILD = os.environ.get("DDSS_SMOKE_BUILD")


def test_toc_lists_chapters_and_every_notebook_is_listed():
    assert CHAPTERS, "no chapters in _toc.yml"
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "book").glob("*.ipynb")}
    assert on_disk == set(CHAPTERS), f"notebooks not in _toc.yml: {on_disk - set(CHAPTERS)}"


def test_waves_run_each_chapter_once_longest_first_and_the_first_alone_unless_prepared():
    a, b = book_execute.LONGEST[:2]                     # a runs longer than b
    nbs = [f"book/{n}.ipynb" for n in ("00_first", "01_x", b, "02_y", a, "09_last")]
    plain, prepared = book_execute.waves(nbs), book_execute.waves(nbs, prepared=True)
    assert plain == [[nbs[0]], [nbs[4], nbs[2], nbs[1], nbs[3]], [nbs[5]]]
    assert prepared == [[nbs[4], nbs[2], nbs[0], nbs[1], nbs[3]], [nbs[5]]]
    assert book_execute.waves(nbs[:2], prepared=True) == [[nbs[0]], [nbs[1]]]


@pytest.mark.parametrize("nb", CHAPTERS)
def test_committed_notebook_is_clean_and_parameterised(nb):
    cells = json.loads((ROOT / nb).read_text())["cells"]
    assert all(not c.get("outputs") and not c.get("execution_count") for c in cells if c["cell_type"] == "code")
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and 'profile = "cpu"' in "".join(params[0]["source"])
    long = [line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()
            if len(line) > 100]
    assert not long, f"code lines wider than the book's code cells (100 characters): {long[:3]}"


@pytest.mark.notebook
@pytest.mark.parametrize("nb", CHAPTERS)
def test_chapter_runs_in_smoke_profile(nb, build_dir):
    if SMOKE_BUILD:
        build = pathlib.Path(SMOKE_BUILD)
        out = build / "src" / nb
        assert out.is_file(), f"{out} was not executed by the smoke build"
    else:
        build = build_dir
        out = build / "executed" / nb
        book_execute.execute(nb, out, profile="smoke", build_dir=build)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert (build / "results" / f"{pathlib.Path(nb).stem}.json").is_file(), "chapter wrote no results JSON"
    tags = [c.get("metadata", {}).get("tags", []) for c in executed["cells"]]
    assert sum("parameters" in t for t in tags) == 1 and not any("injected-parameters" in t for t in tags)
    params = next(c for c, t in zip(executed["cells"], tags) if "parameters" in t)
    assert 'profile = "smoke"' in "".join(params["source"]), "the parameters cell shows the values used"
    first = next(o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "".join(first["text"]).startswith("profile smoke: "), "the first output names the profile and devices"


def test_unknown_profile_fails_the_chapter(build_dir):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="profile must be one of"):
        book_execute.execute(CHAPTERS[0], build_dir / "bad.ipynb", profile="gpu", build_dir=build_dir)


def test_execute_script_rejects_bad_arguments_before_doing_anything(tmp_path):
    run = lambda *a, env=None: subprocess.run([sys.executable, str(ROOT / "book" / "execute.py"), *a],
                                              capture_output=True, text=True, timeout=120, env=env)
    bad = run("--profile", "gpu", "--build-dir", str(tmp_path / "b1"))
    assert bad.returncode == 2 and "--profile must be one of" in bad.stderr and not (tmp_path / "b1").exists()
    bad = run("--profile", "smoke", "--only", "01_setupp", "--build-dir", str(tmp_path / "b2"))
    assert bad.returncode == 2 and "01_setupp" in bad.stderr and not (tmp_path / "b2").exists()
    # DDSS_BUILD_DIR is honoured when --build-dir is not given (nothing to run: --only with no names)
    env = dict(os.environ, DDSS_BUILD_DIR=str(tmp_path / "b3"))
    ok = run("--profile", "smoke", "--only", env=env)
    assert ok.returncode == 0 and (tmp_path / "b3" / "src" / "_toc.yml").is_file(), ok.stderr
