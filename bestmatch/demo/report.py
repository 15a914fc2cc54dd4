"""The demo's report: one self-contained HTML page, its figures as PNG files, and `report.json`.

`write_report(figures, folder)` takes the figures `run_demo` gathered (plain JSON-able values) and
writes `index.html` (the PNGs are embedded, so the page can be mailed or attached to a ticket),
one PNG per figure beside it, and `report.json` with every number the page shows. Figures are
drawn with `matplotlib.figure.Figure` on the Agg canvas, never `pyplot`.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bestmatch.consistency import ConsistencyReport, consistency_figure
from bestmatch.demo.summary import summary_rows
from training.evaluation import METRICS
from training.pipeline import ABLATION, MODEL_LABELS, RANKER

_COLORS = {
    RANKER: "#2b6cb0",
    ABLATION: "#90cdf4",
    "newest_first": "#a0aec0",
    "lowest_bid": "#cbd5e0",
    "random": "#e2e8f0",
}


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def evaluation_figure(evaluation: list[dict[str, Any]]) -> Figure:
    """NDCG@5, NDCG@10 and MAP of every model on the test days, side by side."""
    figure = _figure(8, 3.6)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(evaluation))
    x = np.arange(len(METRICS))
    for i, row in enumerate(evaluation):
        values = [float(row[m]) for m in METRICS]
        bars = axes.bar(
            x + i * width,
            values,
            width,
            label=MODEL_LABELS.get(row["model"], row["model"]),
            color=_COLORS.get(row["model"], "#718096"),
            edgecolor="#4a5568",
            linewidth=0.5,
        )
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    axes.set_xticks(x + width * (len(evaluation) - 1) / 2, [m.upper() for m in METRICS])
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("on the test days")
    axes.set_title("The ranker against the baselines and the ablation")
    axes.legend(fontsize=8, loc="upper left", ncols=2)
    return figure


def histogram_figure(values_ms: list[float], title: str, color: str) -> Figure:
    """A histogram of durations in milliseconds, log-spaced bins, p50 and p99 marked."""
    figure = _figure(6, 3.2)
    axes = figure.add_subplot()
    if values_ms:
        low = max(min(values_ms), 0.01)
        high = max(max(values_ms), low * 1.01)
        bins = np.geomspace(low, high, 30)
        axes.hist(np.clip(values_ms, low, high), bins=bins, color=color, edgecolor="white")
        axes.set_xscale("log")
        for p, style in ((50, "--"), (99, ":")):
            value = float(np.percentile(values_ms, p))
            axes.axvline(
                value, color="#1a202c", linestyle=style, linewidth=1, label=f"p{p} {value:,.1f} ms"
            )
        axes.legend(fontsize=8)
    else:
        axes.text(0.5, 0.5, "no samples", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("milliseconds (log scale)")
    axes.set_ylabel("count")
    axes.set_title(title)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _e(value: object) -> str:
    return html.escape(str(value))


def _table(rows: list[tuple[str, str]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _grid(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table class=grid><tr>{head}</tr>{body}</table>"


def _reasons(explanation: list[dict[str, Any]] | None) -> str:
    if not explanation:
        return ""
    items = []
    for reason in explanation:
        value = reason["value"]
        shown = "missing" if value is None else f"{value:,.3g}"
        sign = "up" if reason["contribution"] >= 0 else "down"
        items.append(
            f'<li class="{sign}">{_e(reason["feature"])} = {_e(shown)} '
            f'<span class="contrib">({reason["contribution"]:+.3f})</span></li>'
        )
    return f"<ul class=reasons>{''.join(items)}</ul>"


def job_html(job: dict[str, Any], open_: bool) -> str:
    """One job's proposals as its client would see them: best first, badges, top reasons."""
    answer = job["answer"]
    rows = []
    for item in answer["ranked"]:
        pid = item["proposal_id"]
        badge = '<span class="badge">BEST MATCH</span>' if item["best_match"] else ""
        letter = job["letters"].get(pid, "")
        letter = letter if len(letter) <= 160 else letter[:157] + "…"
        rows.append(
            "<tr>"
            f"<td class=num>{item['rank']}</td>"
            f"<td>{badge}</td>"
            f"<td>{_e(item['freelancer_id'])}<div class=letter>{_e(letter)}</div></td>"
            f"<td class=num>${job['bids'].get(pid, float('nan')):,.2f}</td>"
            f"<td class=num>{item['score']:.3f}</td>"
            f"<td>{_reasons(item.get('explanation'))}</td>"
            f"<td>{_e(job['actions'].get(pid, ''))}</td>"
            "</tr>"
        )
    missing = answer.get("missing") or {}
    unknown = len(missing.get("freelancers") or [])
    head = (
        f"{_e(job['title'])} — job {_e(job['job_id'])}, {job['proposals']} proposals, "
        f"posted {_e(job['posted_at'])}"
    )
    note = (
        f"<p class=note>model {_e(answer['model']['name'])} v{_e(answer['model']['version'])}"
        f"{', degraded' if answer['degraded'] else ''}; freelancers unknown to the store: "
        f"{unknown}. Last column: what the client has done so far (not used by the model).</p>"
    )
    table = (
        "<table class=ranked><tr><th>rank</th><th></th><th>freelancer, cover letter</th>"
        "<th>bid</th><th>score</th><th>top reasons (SHAP contribution)</th>"
        "<th>client so far</th></tr>" + "".join(rows) + "</table>"
    )
    return f"<details{' open' if open_ else ''}><summary>{head}</summary>{note}{table}</details>"


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1200px;color:#1a202c;padding:0 1em}
h1{margin-bottom:0}h2{margin-top:2em;border-bottom:1px solid #e2e8f0}
.sub{color:#4a5568;margin-top:.2em}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:4px 8px;vertical-align:top;
text-align:left;border-bottom:1px solid #edf2f7}.num{text-align:right}
table.kv th{font-weight:600;color:#2d3748}
.badge{background:#2f855a;color:white;border-radius:4px;padding:2px 6px;font-size:.75em;
font-weight:700;white-space:nowrap}
.letter{color:#718096;font-size:.8em;max-width:28em}
ul.reasons{margin:0;padding-left:1.1em;font-size:.85em}li.up{color:#276749}
li.down{color:#9b2c2c}.contrib{color:#718096}
.verdict-healthy{color:#276749;font-weight:700}.verdict-inconsistent{color:#9b2c2c;font-weight:700}
.note{color:#4a5568;font-size:.9em}img{max-width:100%}summary{cursor:pointer;font-weight:600;
margin:.6em 0}
"""


def write_report(
    figures: dict[str, Any], folder: Path, *, consistency: ConsistencyReport | None = None
) -> Path:
    """Write `index.html`, the PNGs and `report.json` into `folder`; returns the page's path."""
    folder.mkdir(parents=True, exist_ok=True)
    stream, serving = figures["stream"], figures["serving"]
    drawn: dict[str, Figure] = {
        "evaluation": evaluation_figure(figures["training"]["evaluation"]),
        "freshness": histogram_figure(
            stream["freshness_ms"], "Feature freshness: publish to the bus → in Redis", "#3182ce"
        ),
        "latency": histogram_figure(
            serving["latency_ms"], "Ranking latency: POST /v1/rank, client side", "#38a169"
        ),
    }
    consistency_html = ""
    if consistency is not None:
        drawn["consistency"] = consistency_figure(consistency)
        header, body = consistency.feature_table()
        consistency_html = _grid(header, body) + _table(consistency.rows())
    images: dict[str, str] = {}
    for name, figure in drawn.items():
        png = _png(figure)
        (folder / f"{name}.png").write_bytes(png)
        images[name] = base64.b64encode(png).decode()

    def img(name: str) -> str:
        if name not in images:
            return ""
        return f'<img alt="{name}" src="data:image/png;base64,{images[name]}">'

    verdict = str(figures["consistency"]["verdict"])
    training = figures["training"]
    evaluation_rows = [
        (
            MODEL_LABELS.get(row["model"], row["model"]),
            " / ".join(f"{float(row[m]):.4f}" for m in METRICS),
        )
        for row in training["evaluation"]
    ]
    config = figures["config"]
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>BestMatch demo report</title><style>{_STYLE}</style></head><body>
<h1>BestMatch demo report</h1>
<p class=sub>{config["days"]} simulated days × {config["jobs_per_day"]} jobs/day (seed
{config["seed"]}); the last day streamed through the event bus at
{_e(f"{config['rate']:,.0f} events/s" if config["rate"] else "full speed")};
Redis {_e(config["redis"])}, lake {_e(config["lake"])}.</p>
<h2>Headline</h2>{_table(summary_rows(figures))}
<h2>Ranking quality</h2>
<p>NDCG@5 / NDCG@10 / MAP on the test days (labels: the client's furthest action on each
proposal). The ablation is the same ranker without the features that read a streaming window.</p>
{_table(evaluation_rows)}{img("evaluation")}
<p class=note>MLflow run {_e(training["run_id"])}: model v{_e(training["version"])},
{_e(training["reason"])}</p>
<h2>Freshness and latency</h2>
<p>Every {_e(figures.get("freshness_every", 5))}th proposal of the streamed day was timed from its
append to the event bus until its freelancer's change time reached Redis
({stream["sampled"] - stream["unseen"]} of {stream["sampled"]} seen). Ranking latency is measured by
the client over {serving["requests"]} requests on one keep-alive connection, cycling over the
{serving["open_jobs"]} open jobs ({serving["proposals_per_request_mean"]:.0f} proposals per request
on average).</p>
{img("freshness")}{img("latency")}
<h2>What a client sees</h2>
<p>Open jobs of the streamed day, ranked by the service with <code>explain: true</code>; the
first is unfolded.</p>
{"".join(job_html(job, i == 0) for i, job in enumerate(serving["showcase"]))}
<h2>Consistency: served features against the offline store</h2>
<p>Every served feature vector was logged; each was recomputed point in time from the Delta
change log for the same entity and time. Verdict:
<span class="verdict-{_e(verdict)}">{_e(verdict)}</span>.</p>
{img("consistency")}{consistency_html}
<h2>Steps</h2>{_table([(k, f"{v:,.1f} s") for k, v in figures["steps_s"].items()])}
</body></html>"""
    index = folder / "index.html"
    index.write_text(page, encoding="utf-8")
    (folder / "report.json").write_bytes(
        orjson.dumps(figures, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    return index
