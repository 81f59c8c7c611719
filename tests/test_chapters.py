"""Every chapter listed in _toc.yml executes in the smoke profile with papermill, without a cell error."""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("book_execute", ROOT / "book" / "execute.py")
book_execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(book_execute)

CHAPTERS = book_execute.chapters()


def test_toc_lists_chapters_and_every_notebook_is_listed():
    assert CHAPTERS, "no chapters in _toc.yml"
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "book").glob("*.ipynb")}
    assert on_disk == set(CHAPTERS), f"notebooks not in _toc.yml: {on_disk - set(CHAPTERS)}"


@pytest.mark.parametrize("nb", CHAPTERS)
def test_committed_notebook_is_clean_and_parameterised(nb):
    cells = json.loads((ROOT / nb).read_text())["cells"]
    assert all(not c.get("outputs") and not c.get("execution_count") for c in cells if c["cell_type"] == "code")
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and 'profile = "cpu"' in "".join(params[0]["source"])


@pytest.mark.notebook
@pytest.mark.parametrize("nb", CHAPTERS)
def test_chapter_runs_in_smoke_profile(nb, build_dir):
    out = build_dir / "executed" / nb
    book_execute.execute(nb, out, profile="smoke", build_dir=build_dir)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert (build_dir / "results" / f"{pathlib.Path(nb).stem}.json").is_file(), "chapter wrote no results JSON"


def test_unknown_profile_fails_the_chapter(build_dir):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="profile must be one of"):
        book_execute.execute(CHAPTERS[0], build_dir / "bad.ipynb", profile="gpu", build_dir=build_dir)
