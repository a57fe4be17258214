"""``report.html``: the run's report to look at, one self-contained file.

Opens from disk with nothing beside it: inline CSS and JS, plots embedded as
``data:`` PNGs. A catalog table (sortable by any column, pass/FAIL in colour)
links every row to its track's page (a section shown when its ``#track-<row>``
anchor is the target) with the before/after plots a mastering engineer looks
at: short-term loudness over time against the target, the average spectrum,
the limiter's gain reduction over time, and the true-peak markers against the
ceiling. The same plots are written as PNGs under ``report/png/`` for use
elsewhere (one per track, named after the master, beside the plot data in
the deliverable's folder: the output folder, or its per-preset subfolder).

The series come from the workers (:mod:`farm.plots`, ``report/data/*.json``,
:attr:`~farm.records.TrackResult.plot_data`): the client never reads audio.
Plots are drawn with matplotlib's Agg canvas (no display, no pyplot state);
a PNG newer than its data file is reused, so a rerun that skips most of a
catalog redraws only what was rendered again.

The page checks itself as it loads and writes the result on ``<html>``:
``data-images`` / ``data-broken-images`` (every ``<img>`` decoded with a
width) and ``data-errors`` (script or resource errors), so a headless browser
test (and a human with devtools) can tell a broken report at a glance.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .plots import REPORT_DIR
from .records import TrackResult

REPORT_HTML = "report.html"
PNG_DIR = REPORT_DIR + "/png"  # in the deliverable's folder, beside plots.DATA_DIR
FIG_SIZE_IN, FIG_DPI = (12.0, 7.2), 80  # 960 x 576 px: readable in the page, small as a data URI

# colours: input grey, master blue, target green, ceiling red (colour-blind safe enough with the dashes)
C_IN, C_OUT, C_TARGET, C_CEIL, C_GR = "#8c8c8c", "#1f5fbf", "#2e8b57", "#c0392b", "#d35400"


def write_html(results: Sequence[TrackResult], out_dir: str, doc: Mapping[str, Any], *,
               titles: Mapping[int, str] | None = None) -> tuple[str, list[str]]:
    """Write ``report.html`` (and the PNGs) into ``out_dir``; return (html path, PNG paths).

    ``doc`` is the report.json document (:func:`farm.report.report_document`):
    the job and totals at the top of the page come from it.
    """
    from .report import atomic_write

    results = sorted(results, key=lambda r: r.row)
    anchors = _anchors(results)
    pngs, sections = [], []
    for r in results:
        src, problem = _find(out_dir, r)
        data, problem = _load(src) if src else (None, problem)
        png = None
        if data is not None:
            try:
                png_path = _png(src, data)
                pngs.append(png_path)
                with open(png_path, "rb") as f:
                    png = f.read()
            except Exception as e:  # one track's bad data must not take the report down
                problem = f"plots could not be drawn ({type(e).__name__}: {e})"
        sections.append(_section(r, _title(r, titles), anchors[id(r)], png, problem))
    page = _page(doc, results, titles, anchors, sections)
    path = os.path.join(out_dir, REPORT_HTML)
    atomic_write(path, page)
    return path, pngs


# ---------------------------------------------------------------- plot data and PNGs

def _anchors(results: Sequence[TrackResult]) -> dict[int, str]:
    """id(result) -> its page's anchor: ``track-<row>``, or ``track-<row>-<preset>``
    where one catalog row has several deliverables (one per preset)."""
    rows: dict[int, int] = {}
    for r in results:
        rows[r.row] = rows.get(r.row, 0) + 1
    out = {}
    for i, r in enumerate(results):
        slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in r.preset) or str(i)
        out[id(r)] = f"track-{r.row}" if rows[r.row] == 1 else f"track-{r.row}-{slug}"
    return out


def _find(out_dir: str, r: TrackResult) -> tuple[str | None, str]:
    """(absolute path of the result's plot data, or None and why). ``plot_data`` is
    relative to the deliverable's folder: the master's, which is the output folder
    or, for a job with several presets, its subfolder named after the preset."""
    if not r.plot_data:
        return None, "no plot data (the input could not be decoded or measured)"
    bases = ([os.path.dirname(r.output)] if r.output else []) + ([os.path.join(out_dir, r.preset)]
                                                                  if r.preset else []) + [out_dir]
    for base in bases:
        path = os.path.join(base, *r.plot_data.split("/"))
        if os.path.isfile(path):
            return path, ""
    return None, f"plot data {r.plot_data} is missing (looked in {', '.join(dict.fromkeys(bases))})"


def _load(path: str) -> tuple[dict | None, str]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), ""
    except (OSError, ValueError) as e:
        return None, f"plot data {path} unreadable ({e})"


def _png(src: str, data: dict) -> str:
    """The PNG of plot data ``src`` (``<deliverable>/report/data/X.json``): ``<deliverable>/report/png/X.png``."""
    from .report import atomic_write

    name = os.path.basename(src)[:-len(".json")] if src.endswith(".json") else os.path.basename(src)
    path = os.path.join(os.path.dirname(os.path.dirname(src)), "png", name + ".png")
    if os.path.exists(path) and os.path.getmtime(path) >= os.path.getmtime(src):
        return path  # drawn from this very data already (a rerun that skipped the track)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, figure_png(data))
    return path


def _nan(v):
    return math.nan if v is None else float(v)


def figure_png(data: Mapping[str, Any]) -> bytes:
    """The four before/after plots of one track's plot data, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_SIZE_IN, dpi=FIG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    (ax_st, ax_sp), (ax_gr, ax_tp) = fig.subplots(2, 2)
    sides = (("input", data.get("input"), C_IN), ("master", data.get("master_audio"), C_OUT))
    duration = max([s["duration_s"] for _, s, _ in sides if s] + [1.0])
    target, ceiling = data.get("target_lufs"), data.get("ceiling_dbtp")

    ax_st.set_title("Short-term loudness (3 s window, every 100 ms)")
    drawn = False
    for label, side, colour in sides:
        st = side and side["short_term"]
        if st and st["t"]:
            ax_st.plot(st["t"], [_nan(v) for v in st["v"]], color=colour, lw=1.2, label=label)
            drawn = True
    if target is not None:
        ax_st.axhline(target, color=C_TARGET, ls="--", lw=1, label=f"target {target:g} LUFS")
    if not drawn:
        ax_st.text(0.5, 0.5, "shorter than one 3 s window", ha="center", va="center", transform=ax_st.transAxes)
    ax_st.set_xlim(0, duration)
    ax_st.set_xlabel("time (s)")
    ax_st.set_ylabel("LUFS")

    ax_sp.set_title("Average spectrum (Welch, 1/6-octave smoothed)")
    for label, side, colour in sides:
        if side and side["spectrum_hz"]:
            ax_sp.semilogx(side["spectrum_hz"], side["spectrum_db"], color=colour, lw=1.2, label=label)
    ax_sp.set_xlim(20, 20000)
    ax_sp.set_xlabel("frequency (Hz)")
    ax_sp.set_ylabel("dB re FS²/Hz")

    ax_gr.set_title("Limiter gain reduction (deepest per 100 ms)")
    gr = data.get("gain_reduction")
    if gr and gr["t"]:
        t, v = gr["t"], [-_nan(x) for x in gr["v"]]
        ax_gr.fill_between(t, v, 0, color=C_GR, alpha=0.35, lw=0)
        ax_gr.plot(t, v, color=C_GR, lw=1, label="master")
        deepest = max((-x for x in v if not math.isnan(x)), default=0.0)
        ax_gr.set_ylim(min(-1.0, -deepest * 1.2), 0.2)
    else:
        ax_gr.text(0.5, 0.5, "limiter did not run", ha="center", va="center", transform=ax_gr.transAxes)
        ax_gr.set_ylim(-1.0, 0.2)
    ax_gr.set_xlim(0, duration)
    ax_gr.set_xlabel("time (s)")
    ax_gr.set_ylabel("dB")

    ax_tp.set_title("True-peak markers (highest 100 ms hops, 4x oversampled)")
    levels = []
    for (label, side, colour), marker in zip(sides, ("v", "o")):
        peaks = (side or {}).get("true_peaks") or []
        if peaks:
            ax_tp.scatter([p[0] for p in peaks], [p[1] for p in peaks], color=colour, marker=marker, s=36,
                          label=label, zorder=3)
            levels += [p[1] for p in peaks]
    if ceiling is not None:
        ax_tp.axhline(ceiling, color=C_CEIL, ls="--", lw=1, label=f"ceiling {ceiling:g} dBTP")
        levels.append(ceiling)
    if levels:
        ax_tp.set_ylim(min(levels) - 1.0, max(levels) + 0.5)
    ax_tp.set_xlim(0, duration)
    ax_tp.set_xlabel("time (s)")
    ax_tp.set_ylabel("dBTP")

    for ax in (ax_st, ax_sp, ax_gr, ax_tp):
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# ---------------------------------------------------------------- the page

def _title(r: TrackResult, titles: Mapping[int, str] | None) -> str:
    return str((titles or {}).get(r.row, "") or "") or os.path.basename(r.source)


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


_COLUMNS = (  # (header, how to get the value, decimals; None: text)
    ("#", lambda r: r.row, 0),
    ("Title", None, None),
    ("Preset", None, None),
    ("Verdict", None, None),
    ("In LUFS", lambda r: r.input.get("integrated_lufs"), 1),
    ("Out LUFS", lambda r: r.result.get("integrated_lufs"), 1),
    ("Out TP dBTP", lambda r: r.result.get("true_peak_dbtp"), 1),
    ("Out LRA LU", lambda r: r.result.get("loudness_range_lu"), 1),
    ("Gain dB", lambda r: r.gain_db, 1),
    ("Max GR dB", lambda r: r.max_gain_reduction_db, 1),
    ("Duration s", lambda r: r.result.get("duration_s"), 1),
    ("Reason", None, None),
)


def _row(r: TrackResult, title: str, anchor: str) -> str:
    e = html.escape
    ok = r.ok
    reason = r.reason
    if reason.startswith(r.source + ": "):
        reason = reason[len(r.source) + 2:]
    cells = []
    for head, get, nd in _COLUMNS:
        if head == "Title":
            cells.append(f'<td data-v="{e(title.lower())}"><a href="#{anchor}">{e(title)}</a>'
                         f'<div class="src">{e(os.path.basename(r.source))}</div></td>')
        elif head == "Preset":
            cells.append(f'<td data-v="{e(r.preset)}">{e(r.preset)}</td>')
        elif head == "Verdict":
            v = "pass" if ok else "FAIL"
            cells.append(f'<td class="verdict" data-v="{0 if ok else 1}">{v}</td>')
        elif head == "Reason":
            cells.append(f'<td class="reason" data-v="{e(reason.lower())}">{e(reason)}</td>')
        else:
            n = _num(get(r))
            text = "–" if n is None else f"{n:.{nd}f}"
            cells.append(f'<td class="n" data-v="{"" if n is None else repr(n)}">{text}</td>')
    return f'<tr class="{"pass" if ok else "fail"}" data-anchor="{anchor}">' + "".join(cells) + "</tr>"


def _facts(r: TrackResult) -> str:
    e = html.escape
    items = [("source", r.source), ("master", r.output or "(none written)"), ("preset", r.preset),
             ("backend", r.backend), ("worker", r.worker)]
    for k, label in (("integrated_lufs", "LUFS"), ("true_peak_dbtp", "dBTP"), ("loudness_range_lu", "LU LRA")):
        a, b = _num(r.input.get(k)), _num(r.result.get(k))
        items.append((k, f"{'–' if a is None else f'{a:.2f}'} → {'–' if b is None else f'{b:.2f}'} {label}"))
    failed = sorted(k for k, v in r.checks.items() if not v)
    if failed:
        items.append(("failed checks", ", ".join(failed)))
    return "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in items if v) + "</dl>"


def _section(r: TrackResult, title: str, anchor: str, png: bytes | None, problem: str) -> str:
    e = html.escape
    verdict = "pass" if r.ok else "FAIL"
    parts = [f'<section class="track {"pass" if r.ok else "fail"}" id="{e(anchor)}">',
             '<p><a href="#catalog">← catalog</a></p>',
             f'<h2>{r.row}. {e(title)} <span class="badge">{verdict}</span></h2>']
    if r.reason:
        parts.append(f'<p class="why">{e(r.reason)}</p>')
    parts.append(_facts(r))
    if png is not None:
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(f'<img class="plots" alt="plots of {e(title)}: short-term loudness, spectrum, gain '
                     f'reduction, true peaks (input and master)" width="960" src="{uri}">')
    else:
        parts.append(f'<p class="noplot">{e(problem)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em} .meta{color:#555;margin-bottom:1em}
table{border-collapse:collapse;width:100%} th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left}
th{background:#f3f3f3;cursor:pointer;user-select:none;white-space:nowrap;position:sticky;top:0}
th.asc::after{content:" ▲"} th.desc::after{content:" ▼"}
td.n{text-align:right;font-variant-numeric:tabular-nums} td .src{color:#777;font-size:.85em}
tr.pass td.verdict{background:#d8f0dc;color:#145a24;font-weight:600}
tr.fail td.verdict{background:#f8d7d5;color:#8a1c12;font-weight:600}
tr[data-anchor]:hover{background:#f7f9ff;cursor:pointer} td.reason{color:#8a1c12;max-width:40em}
.track{display:none;margin-top:1em} .track:target{display:block}
.track h2 .badge{font-size:.7em;padding:2px 6px;border-radius:3px}
.track.pass .badge{background:#d8f0dc;color:#145a24} .track.fail .badge{background:#f8d7d5;color:#8a1c12}
.why{color:#8a1c12} dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}
dt{color:#555} dd{margin:0} img.plots{max-width:100%;height:auto;border:1px solid #ddd}
.noplot{color:#777;font-style:italic}
"""

# Installed first: records script and resource errors on <html> (data-errors).
_JS_HEAD = """
(function(){var d=document.documentElement;d.dataset.errors="";
window.addEventListener("error",function(ev){var what=ev.message||("failed to load "+((ev.target&&(ev.target.src||ev.target.href))||"a resource"));
d.dataset.errors+=what.slice(0,200)+"\\n";},true);})();
"""

# Sorting, row links, and the self-check once everything has loaded.
_JS_BODY = """
(function(){
var table=document.getElementById("catalog-table"),body=table.tBodies[0];
Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,col){
 th.addEventListener("click",function(){
  var asc=!th.classList.contains("asc");
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(h){h.classList.remove("asc","desc");});
  th.classList.add(asc?"asc":"desc");
  var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){
   var x=a.cells[col].dataset.v,y=b.cells[col].dataset.v,nx=parseFloat(x),ny=parseFloat(y);
   if(x===""&&y!=="")return 1; if(y===""&&x!=="")return -1;
   var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:(x<y?-1:x>y?1:0);
   return asc?c:-c;});
  rows.forEach(function(r){body.appendChild(r);});
 });});
Array.prototype.forEach.call(body.rows,function(tr){tr.addEventListener("click",function(ev){
 if(ev.target.tagName!=="A")location.hash=tr.dataset.anchor;});});
window.addEventListener("load",function(){
 var d=document.documentElement,imgs=Array.prototype.slice.call(document.images);
 var broken=imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0);});
 d.dataset.images=String(imgs.length);d.dataset.brokenImages=String(broken.length);
 d.dataset.tableRows=String(body.rows.length);d.dataset.checked="1";});
})();
"""


def _page(doc: Mapping[str, Any], results: Sequence[TrackResult], titles, anchors: dict, sections: list[str]) -> str:
    e = html.escape
    job, tot = doc.get("job", {}), doc.get("totals", {})
    meta = [f"{tot.get('tracks', len(results))} tracks: {tot.get('passed', 0)} passed, {tot.get('failed', 0)} failed"]
    for k in ("preset", "catalog", "output_dir", "started", "finished", "backend"):
        if job.get(k):
            meta.append(f"{k}: {job[k]}")
    if tot.get("realtime_factor"):
        meta.append(f"{tot['realtime_factor']}x realtime")
    head = "".join(f"<th>{e(h)}</th>" for h, _, _ in _COLUMNS)
    rows = "\n".join(_row(r, _title(r, titles), anchors[id(r)]) for r in results)
    name = os.path.basename(str(job.get("catalog") or "")) or "catalog"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mastering report: {e(name)}</title>
<style>{_CSS}</style>
<script>{_JS_HEAD}</script>
</head><body>
<h1 id="catalog">Mastering report: {e(name)}</h1>
<div class="meta">{" · ".join(e(str(m)) for m in meta)}</div>
<table id="catalog-table"><thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody></table>
{chr(10).join(sections)}
<script>{_JS_BODY}</script>
</body></html>
"""


__all__ = ["PNG_DIR", "REPORT_HTML", "figure_png", "write_html"]
