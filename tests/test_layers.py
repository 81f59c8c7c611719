"""The library's layers (DESIGN.md section 2): imports between ``ddss_lite`` modules point down.

Every import of one ``ddss_lite`` module by another (at module level or inside a function) is
read from the source with ``ast``. A module may import from its own layer or a lower one; import
circles and private names (``module._name``) used across modules are not allowed. What the tree
still does against these rules is listed below as known debts, each with the reason; the test
fails on a new violation and on a listed debt that no longer exists, so the lists only shrink
(the planned move into subpackages settles the rest).
"""
import ast
import collections
import pathlib

import pytest

LIB = pathlib.Path(__file__).resolve().parents[1] / "ddss_lite"

LAYERS = (  # bottom first
    ("base", {"validate", "store", "paths", "progress", "profiles"}),
    ("core", {"schedules", "diffusion", "models", "grids"}),
    ("engine", {"parallel", "chain"}),
    ("networks, training and data", {"nets", "train", "data"}),
    ("samplers", {"samplers", "integrators"}),
    ("evaluation", {"features", "metrics", "evaluation"}),
    ("psld", {"psld", "splitting"}),
    ("methods", {"ddss", "elbo", "dp", "distill"}),
    ("book helpers", {"pretrained", "report"}),
)

KNOWN_UPWARD = {
    ("psld", "pretrained"): "psld trains its models with the book's optimiser (pretrained.adam)",
    ("distill", "pretrained"): "a student of a book model is built as pretrained.Pretrained",
}
KNOWN_CYCLES = {
    frozenset({"distill", "pretrained"}): "pretrained.distilled_students runs distill; distill builds Pretrained",
}
KNOWN_PRIVATE: dict = {}


def _layer_of():
    out = {}
    for i, (_, mods) in enumerate(LAYERS):
        for m in mods:
            out[m] = i
    return out


def _imports():
    """``{module: {imported module: {names used as module._name}}}`` over the library's sources."""
    mods = {p.stem for p in LIB.glob("*.py") if p.stem != "__init__"}
    edges = collections.defaultdict(dict)
    for m in sorted(mods):
        tree = ast.parse((LIB / f"{m}.py").read_text())
        aliases = {}                                   # local name -> ddss_lite module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "ddss_lite":
                    for a in node.names:
                        if a.name in mods:
                            edges[m].setdefault(a.name, set())
                            aliases[a.asname or a.name] = a.name
                elif node.module.startswith("ddss_lite."):
                    target = node.module.split(".")[1]
                    edges[m].setdefault(target, set())
                    for a in node.names:
                        if a.name.startswith("_"):
                            edges[m][target].add(a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("ddss_lite."):
                        edges[m].setdefault(a.name.split(".")[1], set())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                edges[m][aliases[node.value.id]].add(node.attr)
        edges[m].pop(m, None)
    return mods, edges


def test_every_module_has_a_layer():
    mods, _ = _imports()
    layer = _layer_of()
    assert sum(len(s) for _, s in LAYERS) == len(layer), "a module is listed in two layers"
    assert mods == set(layer), f"not in a layer: {sorted(mods - set(layer))}; gone: {sorted(set(layer) - mods)}"


def test_imports_point_down():
    _, edges = _imports()
    layer = _layer_of()
    upward = {(a, b) for a, targets in edges.items() for b in targets if layer[b] > layer[a]}
    assert upward - set(KNOWN_UPWARD) == set(), "imports that point up a layer (DESIGN.md section 2)"
    assert set(KNOWN_UPWARD) - upward == set(), "settled: remove these from KNOWN_UPWARD"


def test_no_import_circles():
    _, edges = _imports()
    cycles = {frozenset({a, b}) for a, targets in edges.items() for b in targets if a in edges.get(b, {})}
    # longer circles: a module reachable from itself through two or more others
    graph = {a: set(t) for a, t in edges.items()}

    def reaches(start, goal, seen):
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    in_circle = {m for m in graph if reaches(m, m, {m})}
    assert in_circle <= set().union(*KNOWN_CYCLES), f"modules on a new import circle: {sorted(in_circle)}"
    assert cycles - set(KNOWN_CYCLES) == set(), "new two-module import circles"
    assert set(KNOWN_CYCLES) - cycles == set(), "settled: remove these from KNOWN_CYCLES"


def test_no_private_names_across_modules():
    _, edges = _imports()
    private = {(a, b, n) for a, targets in edges.items() for b, names in targets.items() for n in names}
    assert private - set(KNOWN_PRIVATE) == set(), "a module uses another's private names (make them public)"
    assert set(KNOWN_PRIVATE) - private == set(), "settled: remove these from KNOWN_PRIVATE"


@pytest.mark.parametrize("table", [KNOWN_UPWARD, KNOWN_CYCLES, KNOWN_PRIVATE], ids=["upward", "cycles", "private"])
def test_every_debt_says_why(table):
    assert all(isinstance(why, str) and len(why) > 10 for why in table.values())
