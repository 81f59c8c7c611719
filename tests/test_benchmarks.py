"""The benchmark scripts are not run by the tests (they time things; `make bench` runs them), so a
renamed library function would break one silently. This checks, without running them, that every
name a script takes from ``ddss_lite`` exists: ``from ddss_lite[.mod] import name`` anywhere in
the file (function bodies included) and every ``mod.attr`` read off such an imported module."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "common.py")


def library_references(tree: ast.AST):
    """``(line, module, attribute)`` for every name the file takes from ``ddss_lite``."""
    modules, refs = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ddss_lite":
            for alias in node.names:
                refs.append((node.lineno, node.module, alias.name))
                if node.module == "ddss_lite":
                    modules[alias.asname or alias.name] = f"ddss_lite.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            refs.append((node.lineno, modules[node.value.id], node.attr))
    return refs


def test_the_scripts_are_found_and_listed_in_the_readme_and_the_makefile():
    assert len(SCRIPTS) >= 5
    readme = (BENCH / "README.md").read_text()
    makefile = (BENCH.parent / "Makefile").read_text()
    for p in SCRIPTS:
        assert f"`{p.name}`" in readme, f"{p.name} is not described in benchmarks/README.md"
        assert f"benchmarks/{p.name}" in makefile, f"{p.name} is not run by `make bench`"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_every_name_a_benchmark_takes_from_the_library_exists(script):
    refs = library_references(ast.parse(script.read_text(), filename=str(script)))
    assert refs, f"{script.name} uses nothing from ddss_lite"
    missing = [f"{script.name}:{line}: {mod}.{name}" for line, mod, name in refs
               if not hasattr(importlib.import_module(mod), name)
               and importlib.util.find_spec(f"{mod}.{name}") is None]
    assert not missing, "names that do not exist in the library: " + ", ".join(missing)


def test_the_check_finds_a_missing_name():
    tree = ast.parse("from ddss_lite import samplers\n"
                     "def f():\n    from ddss_lite.distill import no_such_function\n"
                     "    return samplers.no_such_sampler\n")
    refs = library_references(tree)
    assert (3, "ddss_lite.distill", "no_such_function") in refs
    assert (4, "ddss_lite.samplers", "no_such_sampler") in refs
    assert not hasattr(importlib.import_module("ddss_lite.samplers"), "no_such_sampler")


def test_the_ddss_step_benchmark_traces_the_accelerator_profiles_steps(tmp_path):
    """The benchmark a GPU session runs in the accelerator profile, traced at its real sizes (the
    CIFAR-10 U-Net of width 64 on 32x32x3 images, batch 1024, K = 5, 10, 20, with and without
    remat) with ``--trace-only``: shapes only, nothing compiled, timed or written."""
    spec = importlib.util.spec_from_file_location("ddss_step_bench", BENCH / "ddss_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "ddss_step.json"
    record = bench.main(["--profile", "accelerator", "--trace-only", "--output", str(out)])
    assert record["sizes"]["image"] == [32, 32, 3] and record["sizes"]["net"] == "unet"
    assert record["sizes"]["batch"] == 1024 and record["sizes"]["hidden"] == 64
    assert record["traced"] == [(K, remat) for K in (5, 10, 20) for remat in (True, False)]
    assert not out.exists()
    with pytest.raises(SystemExit):
        bench.main(["--batch", "1", "--output", str(out)])
    assert not out.exists()
