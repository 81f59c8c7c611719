"""Getting results out of a chapter: one figure style, numbers into the prose, tables to JSON.

* :func:`figure` / :func:`save` — every figure goes through one helper and one style and is
  also written as PNG under ``_build/figures/``.
* :func:`glue` — a number reaches the prose through myst-nb's ``glue`` (so text and result
  never disagree); outside a book build it just displays the value.
* :func:`table` — a table as the reader sees it: a MyST table with a caption, numbers
  right-aligned (``nb_render_markdown_format: myst`` in ``_config.yml`` renders it as HTML).
* :func:`write_results` — a chapter's tables as one JSON file under ``_build/results/``.
* :func:`records`, :func:`select`, :func:`one` — results keyed by what they are about: each row names
  its table, data set, model, sampler, grid and NFE as fields (never a ``"label|NFE=n"`` string that a
  reader would have to parse back), and another chapter finds a row by those fields.

The helpers that write files return ``None``, so a cell that ends with one shows no path.
"""
from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np

from ddss_lite import paths, store

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 130, "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "legend.frameon": False, "image.cmap": "gray_r",
}


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 3.2, height: float = 2.8, **kw):
    """A ``(fig, axes)`` pair in the book's style, ``width x height`` inches per panel."""
    plt.rcParams.update(STYLE)
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                        constrained_layout=True, **kw)


def save(fig, name: str) -> None:
    """Write ``fig`` to ``_build/figures/{name}.png`` (the figure itself is shown by the notebook)."""
    path = paths.build_dir() / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")


def image_grid(ax, images, *, nrow: int | None = None, title: str | None = None):
    """Tile ``images`` (N, H, W[, 1 or 3]) in [-1, 1] into one panel: grey-scale as black digits on
    white, colour images (CIFAR-10) in colour on a white background."""
    x = np.asarray(images)
    x = x[..., 0] if x.ndim == 4 and x.shape[-1] == 1 else x
    colour = x.ndim == 4
    n, h, w = x.shape[:3]
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    canvas = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1) + x.shape[3:], 1.0 if colour else -1.0)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = x[i]
    if colour:
        ax.imshow(np.clip((canvas + 1) / 2, 0, 1), interpolation="nearest")
    else:
        ax.imshow(np.clip(canvas, -1, 1), vmin=-1, vmax=1, cmap="gray_r", interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)


def scatter2d(ax, points, *, title: str | None = None, lim: float = 2.5, **kw):
    """A 2-D point cloud on a square window ``[-lim, lim]^2``."""
    p = np.asarray(points)
    ax.scatter(p[:, 0], p[:, 1], s=kw.pop("s", 1.5), alpha=kw.pop("alpha", 0.5), linewidths=0, **kw)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)


def glue(name: str, value, *, display: bool = False) -> None:
    """Make ``value`` available to the prose as ``{glue:md}`name``` (myst-nb).

    The value is glued as Markdown text (``str(value)``; format numbers before gluing), so the
    rendered sentence shows ``0.981`` rather than the repr ``'0.981'``.
    """
    try:
        from IPython.display import Markdown
        from myst_nb import glue as _glue
    except ImportError:  # e.g. in Colab without the book extras
        print(f"{name} = {value}")
        return
    _glue(name, Markdown(str(value)), display=display)


def glue_html_table(name: str, rows: list[dict], columns: list[str], *, caption: str) -> None:
    """Glue ``rows`` as an HTML table under ``name``, for another page of the book to show
    (a ``{glue} name`` directive with the option ``:doc: chapter.ipynb`` in a Markdown page:
    myst-nb pastes HTML across pages, not Markdown). Cells are escaped; the caption says what the numbers are."""
    import html

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    table_html = (f'<table class="table"><caption>{html.escape(caption)}</caption>'
                  f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    try:
        from IPython.display import HTML
        from myst_nb import glue as _glue
    except ImportError:
        print(f"{name}: {len(rows)} rows")
        return
    _glue(name, HTML(table_html), display=False)


CHAPTERS = ("01_setup", "02_baselines", "03_ddss", "04_dp_schedules", "05_distillation",
            "06_conjugate_integrators", "07_splitting_integrators", "08_head_to_head")
"""The book's chapters (``_toc.yml``, checked by the tests): the only names a results file may have."""


def _check_chapter(chapter) -> str:
    if not isinstance(chapter, str) or chapter not in CHAPTERS:
        raise ValueError(f"chapter must be one of the book's chapters {list(CHAPTERS)}, got {chapter!r}")
    return chapter


def _json_values(obj, where: str = "results"):
    """``obj`` with every non-finite float (NaN, +-inf; NumPy scalars and arrays included) replaced by
    ``None`` (JSON ``null``): JSON holds no NaN. Dict keys must be strings, ints or floats."""
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, (str, int, float, np.integer)) or isinstance(k, bool)]
        if bad:
            raise TypeError(f"{where}: dict keys must be strings or numbers, got {bad[:3]!r}")
        return {(int(k) if isinstance(k, np.integer) else k): _json_values(v, f"{where}[{k!r}]")
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_values(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return _json_values(obj.tolist(), where)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_results(chapter: str, results: dict) -> None:
    """Write ``results`` (JSON-serialisable: dicts, lists, numbers, strings, NumPy values) to
    ``_build/results/{chapter}.json`` atomically. ``chapter`` is one of :data:`CHAPTERS`; NaN and
    infinite numbers are written as ``null`` (read back as ``None``)."""
    _check_chapter(chapter)
    if not isinstance(results, dict):
        raise TypeError(f"results must be a dict, got {type(results).__name__}")
    store.atomic_write_json(paths.results_dir() / f"{chapter}.json", _json_values(results))


def read_results(chapter: str) -> dict:
    """The results JSON an executed chapter wrote (:func:`write_results`); a clear error naming the
    chapter to run first when it is missing, and naming the file when it cannot be read."""
    import json

    path = paths.results_dir() / f"{_check_chapter(chapter)}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: execute chapter {chapter} first "
                                f"(python book/execute.py --only {chapter})")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise store.CorruptFile(f"{path} is not a readable results file ({e}); execute chapter {chapter} again "
                                f"(python book/execute.py --only {chapter})") from None


RECORD_KEYS = ("table", "dataset", "model", "sampler", "grid", "nfe")
"""What every record is about (:func:`records`)."""


def records(rows: dict, *, table: str, keys=("sampler", "nfe"), **about) -> list[dict]:
    """Records from a chapter's table ``rows`` keyed by tuples (e.g. ``q[label, nfe]``): the key's parts
    named by ``keys``, the fields of ``about`` (``dataset``, ``model``, ``grid`` and any other), then the
    row's values (a dict, or one number stored as ``value``). Every record names all of
    :data:`RECORD_KEYS` (``grid``: a grid name of :mod:`ddss_lite.grids`, or what the chapter ran on,
    e.g. ``"ELBO-optimal"``); a part of the key overrides ``about``, a value may not. ``nfe`` is an int."""
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    out = []
    for k, v in rows.items():
        parts = k if isinstance(k, tuple) else (k,)
        if len(parts) != len(keys):
            raise ValueError(f"records: a key of table {table!r} has {len(parts)} parts {parts!r}, but keys "
                             f"names {len(keys)}: {keys}")
        r = dict(about, table=table, **dict(zip(keys, parts)))
        values = dict(v) if isinstance(v, dict) else {"value": v}
        clash = sorted(set(values) & set(r))
        if clash:
            raise ValueError(f"records: the values of table {table!r} hold {clash}, which name what a record "
                             "is about; rename them")
        missing = [f for f in RECORD_KEYS if f not in r]
        if missing:
            raise ValueError(f"records: table {table!r} gives no {missing} (pass them as keys or keywords)")
        if isinstance(r["nfe"], bool) or not isinstance(r["nfe"], (int, np.integer)) or r["nfe"] < 1:
            raise ValueError(f"records: nfe must be an int >= 1, got {r['nfe']!r} in table {table!r}")
        r["nfe"] = int(r["nfe"])
        out.append({**r, **values})
    return out


def select(rows: list[dict], **match) -> list[dict]:
    """The records of ``rows`` whose fields equal every ``match`` (``select(R["records"], table="quality",
    nfe=10)``)."""
    return [r for r in rows if all(k in r and r[k] == v for k, v in match.items())]


def one(rows: list[dict], **match) -> dict:
    """The one record matching ``match`` (:func:`select`); ``KeyError`` naming the match when there is
    none (with the values the closest field holds) or several."""
    found = select(rows, **match)
    if len(found) == 1:
        return found[0]
    if not found:
        seen = {k: sorted({str(r.get(k)) for r in rows})[:12] for k in match}
        raise KeyError(f"no record with {match}; the records hold {seen}")
    raise KeyError(f"{len(found)} records match {match}; add a field that tells them apart")


def pm(value: float, se: float, digits: int = 4) -> str:
    """``"value ± se"`` with ``digits`` decimals (a table cell with its standard error)."""
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (dicts) with the given column order; a column whose cells are
    numbers (or ``"x ± y"`` strings) is right-aligned."""
    esc = lambda v: str(v).replace("|", "\\|")
    fmt = lambda v: f"{v:.4g}" if isinstance(v, (float, np.floating)) else esc(v)
    numeric = lambda v: _is_number(v) or (isinstance(v, str) and (v.replace(".", "", 1).lstrip("-+").isdigit()
                                                                   or " ± " in v))
    align = ["---:" if rows and all(numeric(r.get(c, "")) or r.get(c, "") in ("", "–") for r in rows)
             and any(numeric(r.get(c, "")) for r in rows) else "---" for c in columns]
    lines = ["| " + " | ".join(map(esc, columns)) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def table(rows: list[dict], columns: list[str], *, caption: str) -> None:
    """Display ``rows`` as a captioned MyST table (``{table}`` directive), numbers right-aligned.
    The caption says what the numbers are and what the ± means."""
    from IPython.display import Markdown, display

    display(Markdown(f"```{{table}} {caption}\n{markdown_table(rows, columns)}\n```"))
