"""Each chapter's first cell installs ddss_lite on a fresh runtime (Colab) and the chapter's
imports then work.

The check, on the notebooks' own cells (every chapter has the same install cell, checked, so it
runs once and then every chapter's imports run in that runtime):

1. build a wheel of this working tree (tracked and untracked, not ignored files: what the
   cell's ``git+https`` URL builds once committed), offline when setuptools is installed here;
2. make a fresh virtual environment in which ``ddss_lite`` is not importable and that
   holds, like Colab's preinstalled stack, exactly the distributions that the wheel's
   declared dependencies need (their closure from installed metadata) plus a kernel's
   IPython and pip; nothing else from the development environment, so a dependency that
   the library uses but ``pyproject.toml`` does not declare fails here;
3. run, in IPython in that environment, the chapter's install cell (the code cell tagged
   ``remove-cell`` with ``%pip install``) with only its ``git+https`` URL replaced by the
   local wheel, and pip kept offline (``PIP_NO_INDEX``: the declared dependencies must
   already be satisfied, as on Colab), then the import statements of the chapter's first
   code cell after the parameters cell;
4. assert that every cell succeeded and that ``ddss_lite`` was imported from the fresh
   environment, not from this checkout.

Not covered: that the URL's repository exists and is public, the isolated build from a git
clone (which fetches setuptools), and Colab's own versions of jax, flax and optax (the
dependencies come from this environment, i.e. ``requirements.lock``).
"""
import ast
import email.parser
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = pathlib.Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "book").glob("*.ipynb"))
GIT_REQUIREMENT = re.compile(r"^(ddss[-_]lite)\s*@\s*git\+https://\S+$", re.IGNORECASE)
KERNEL = ("ipython", "pip")  # what a Jupyter kernel brings besides the package's dependencies
TIMEOUT_S = 120  # for any one subprocess

RUNNER = r'''
import importlib.util, json, sys
from traitlets.config import Config
from IPython.core.interactiveshell import InteractiveShell

if importlib.util.find_spec("ddss_lite") is not None:
    sys.exit(f"not a fresh runtime: ddss_lite is importable from {importlib.util.find_spec('ddss_lite').origin}")
config = Config()
config.HistoryManager.enabled = False
shell = InteractiveShell.instance(config=config)
for label, source in json.load(open(sys.argv[1])):
    print(f"--- {label}", flush=True)
    shell.user_ns["_exit_code"] = 0
    result = shell.run_cell(source, store_history=False)
    if not result.success:
        sys.exit(f"{label} failed: {result.error_before_exec or result.error_in_exec!r}")
    if shell.user_ns.get("_exit_code", 0) != 0:
        sys.exit(f"{label}: a shell command (%pip) exited with {shell.user_ns['_exit_code']}")
import ddss_lite
print("DDSS_LITE_FILE=" + ddss_lite.__file__, flush=True)
# modules the library imports anywhere (also inside functions), other than optional ones
missing = [m for m in json.load(open(sys.argv[2])) if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"ddss_lite imports {missing}, which its declared dependencies do not install")
'''


def _source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def chapter_cells(path):
    """``(install cell, import statements)`` of a chapter: the first code cell, which must be
    the ``remove-cell`` cell with ``%pip install``, and the top-level imports of the first code
    cell after the ``parameters`` cell."""
    code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    install = code[0]
    assert "remove-cell" in install.get("metadata", {}).get("tags", []) and "%pip install" in _source(install), \
        f"{path.name}: the first code cell must be the install cell (tag remove-cell, %pip install)"
    params = [i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and params[0] + 1 < len(code), f"{path.name}: one parameters cell, then code"
    tree = ast.parse(_source(code[params[0] + 1]))
    imports = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert any("ddss_lite" in line for line in imports), f"{path.name}: the cell imports no ddss_lite"
    return _source(install), "\n".join(imports)


def localise(install_source, wheel):
    """The install cell with its one ``ddss_lite @ git+https://...`` requirement pointing at ``wheel``."""
    lines, found = install_source.splitlines(), 0
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if not stripped.startswith("%pip"):
            continue
        words = shlex.split(stripped[len("%pip"):])
        assert words[:1] == ["install"], f"unexpected %pip command: {stripped}"
        for j, word in enumerate(words):
            m = GIT_REQUIREMENT.match(word)
            if m:
                words[j] = f"{m.group(1)} @ {wheel.as_uri()}"
                found += 1
        lines[i] = line[: len(line) - len(stripped)] + "%pip " + shlex.join(words)
    assert found == 1, f"expected one 'ddss_lite @ git+https://...' requirement in:\n{install_source}"
    return "\n".join(lines)


def _copy_sources(dst):
    """The working tree's files that git would see (tracked, and untracked but not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, timeout=TIMEOUT_S, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def library_imports(wheel):
    """Top-level modules that the wheel's ``ddss_lite`` imports anywhere (module level or inside
    functions), except within a ``try`` that handles ``ImportError`` (optional imports)."""

    class Imports(ast.NodeVisitor):
        def __init__(self):
            self.names, self.optional = set(), 0

        def visit_Try(self, node):
            caught = {n.id for h in node.handlers if h.type is not None
                      for n in ast.walk(h.type) if isinstance(n, ast.Name)}
            handles = any(h.type is None for h in node.handlers) or bool(caught & {"ImportError", "ModuleNotFoundError"})
            self.optional += handles
            for child in node.body:
                self.visit(child)
            self.optional -= handles
            for child in (*node.handlers, *node.orelse, *node.finalbody):
                self.visit(child)

        def visit_Import(self, node):
            if not self.optional:
                self.names.update(a.name.split(".")[0] for a in node.names)

        def visit_ImportFrom(self, node):
            if not self.optional and node.level == 0 and node.module != "__future__":
                self.names.add(node.module.split(".")[0])

    visitor = Imports()
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("ddss_lite/") and name.endswith(".py"):
                visitor.visit(ast.parse(z.read(name), filename=name))
    assert {"jax", "numpy"} <= visitor.names, sorted(visitor.names)
    return sorted(visitor.names)


def _requires(dist, extras):
    """The requirements of ``dist`` that apply with ``extras`` (markers evaluated here)."""
    out = []
    for spec in dist.requires or ():
        req = Requirement(spec)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            out.append(req)
    return out


def _closure(roots):
    """Installed distributions needed by ``roots`` (requirements, extras included), by their metadata."""
    seen, done, todo = {}, set(), list(roots)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extras = frozenset(canonicalize_name(e) for e in req.extras)
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            dist = seen.setdefault(name, importlib.metadata.distribution(name))
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{req} is required but not installed in {sys.prefix}; run `make env`")
        todo.extend(_requires(dist, extras))
    return seen


def _runtime_site(dists, shadow):
    """Link the files of ``dists`` (top-level entries of their RECORD) into ``shadow``."""
    site = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
    for name, dist in dists.items():
        assert dist.files, f"{name} has no RECORD; cannot tell its files"
        for f in dist.files:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth") or (shadow / top).exists():
                continue
            target = (pathlib.Path(dist.locate_file(top))).resolve()
            assert target.is_relative_to(site), f"{name}: {top} lies outside {site}"
            (shadow / top).symlink_to(target)


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A local wheel of this working tree and a site directory holding only the runtime that
    ddss_lite's declared dependencies need (plus IPython and pip)."""
    tmp = tmp_path_factory.mktemp("colab")
    src, wheels, shadow = tmp / "src", tmp / "wheel", tmp / "runtime-site"
    src.mkdir()
    shadow.mkdir()
    _copy_sources(src)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(wheels), str(src)],
                   check=True, timeout=TIMEOUT_S, env=_env(tmp, offline=bool(isolation)))
    (wheel,) = wheels.glob("ddss_lite-*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode())
    declared = [r for r in (Requirement(s) for s in meta.get_all("Requires-Dist") or [])
                if r.marker is None or r.marker.evaluate({"extra": ""})]
    assert declared, "the wheel declares no dependencies"
    dists = _closure(declared + [Requirement(k) for k in KERNEL])
    assert "ddss-lite" not in dists
    _runtime_site(dists, shadow)
    return wheel, shadow, tmp


def _env(tmp, *, offline=True):
    """This process's environment without its Python/virtualenv settings; ``offline``: pip
    without this machine's pip configuration and without an index."""
    drop = ("PYTHON", "VIRTUAL_ENV", "IPYTHONDIR", *(("PIP_",) if offline else ()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1",
               IPYTHONDIR=str(tmp / "ipython"), MPLCONFIGDIR=str(tmp / "matplotlib"))
    if offline:
        env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1")
    return env


def test_localise_replaces_only_the_url(tmp_path):
    wheel = tmp_path / "ddss_lite-0.1.0-py3-none-any.whl"
    cell = ('try:\n    import ddss_lite  # noqa: F401\nexcept ImportError:\n'
            '    %pip install -q "ddss_lite @ git+https://github.com/o/r"\n')
    out = localise(cell, wheel)
    assert out.splitlines()[:3] == cell.splitlines()[:3]
    assert out.splitlines()[3] == f"    %pip install -q 'ddss_lite @ {wheel.as_uri()}'"
    with pytest.raises(AssertionError, match="one 'ddss_lite @ git"):
        localise(cell.replace("git+https://github.com/o/r", "ddss_lite==0.1"), wheel)


def test_install_cell_on_fresh_runtime(colab, tmp_path):
    """Every chapter has the same install cell: run it once on one fresh runtime, then every chapter's
    imports there (each a labelled cell: a failure names the chapter)."""
    wheel, shadow, tmp = colab
    cells = {chapter.stem: chapter_cells(chapter) for chapter in CHAPTERS}
    code = lambda src: "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("#"))
    installs = {code(install) for install, _ in cells.values()}      # the same code, comments aside
    assert len(installs) == 1, f"the chapters' install cells differ: {sorted(installs)}"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=TIMEOUT_S)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=TIMEOUT_S).stdout.strip()
    pathlib.Path(purelib, "colab-runtime.pth").write_text(f"{shadow}\n")  # the preinstalled stack
    cells_json = tmp_path / "cells.json"
    cells_json.write_text(json.dumps([["install cell", localise(installs.pop(), wheel)]]
                                     + [[f"{name}: imports", imports] for name, (_, imports) in cells.items()]))
    modules = tmp_path / "modules.json"
    modules.write_text(json.dumps(library_imports(wheel)))
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    proc = subprocess.run([python, str(runner), str(cells_json), str(modules)], cwd=tmp_path, env=_env(tmp),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    log = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, log
    assert all(f"--- {name}: imports" in proc.stdout for name in cells), log
    found = re.search(r"^DDSS_LITE_FILE=(.*)$", proc.stdout, re.MULTILINE)
    assert found and pathlib.Path(found.group(1)).is_relative_to(purelib), log
