"""The shareable report: one HTML file per run, sweep or comparison that opens offline.

It holds what was run (each config, and what differs between the runs), the device, driver and
software, the headline figures with their spread, the same Plotly charts as the pages (built by
the same functions in optlab.charts, optlab.profile_charts and optlab.variant_charts), the
profile summary, the advice with its evidence, compression variants, the events, and how the
figures were measured. plotly.js is inlined once in <head>, so the file draws without a network.

Text from a person or from another machine (names, labels, users, errors, paths, kernel names
in an imported run) is escaped: html.escape in the page, and escaped before it reaches a chart
too, because Plotly renders a little HTML (<b>, <a href>) in titles, ticks and hover text.
Plotly is imported only when a report is built, so the engine imports without it.
"""
from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from optlab import advisor, charts, ladder, profile_charts, stats, views
from optlab.ddp import distributed_rows
from optlab.store import Run, Store

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
OUTCOMES = [("train_images_per_s", "throughput (images/s)"), ("test_accuracy", "accuracy (%)"),
            ("peak_memory_mb", "peak memory (MB)")]   # the Compare page's parallel-coordinates outcomes

# How each figure is defined (README "What is measured, and how"), for the report's last section.
MEASURED = (
    ("Training throughput", "images/s over steady-state steps only: warm-up (cuDNN autotuning, compilation) "
     "and the profiled window are left out. Each step is bracketed by marks on the device timeline (CUDA "
     "events on a GPU; the host clock on the CPU, where work is synchronous), read back after the epoch, so "
     "nothing synchronises inside a timed step. The headline is the median of the per-step throughputs."),
    ("Its spread", "p10 and p90 are the step-to-step spread; the 95 % interval is a bootstrap interval of the "
     "median over the steady steps (how well this run pinned its own median down, not how much another run "
     "may differ). Runs recorded before intervals were kept say \"no interval\". A ratio between two runs is "
     "called a difference only when its interval lies wholly beyond ±3 %."),
    ("Step time", "median and p90 per step, split into input wait (end of the previous step to the start of "
     "this one's compute), forward+backward and optimizer."),
    ("Peak memory", "torch.cuda.max_memory_allocated (and reserved) on a GPU; on the CPU the process's peak "
     "resident set, which includes the data set and Python, labelled as such."),
    ("Accuracy", "top-1 on the data set's held-out test split after each epoch; time to accuracy is the "
     "training wall time (evaluation excluded) at the end of the first epoch reaching the target."),
    ("Profile", "a short torch.profiler window after warm-up (its steps are left out of the timings). On a "
     "GPU: kernel time by category, GPU busy vs idle, host vs device time per step, Tensor Core share "
     "estimated from kernel names. On the CPU: the same questions answered with operator self time, "
     "labelled as CPU figures."),
    ("Variants", "each compressed model is evaluated on the test split and benchmarked on the device it "
     "targets: batch-1 latency median and p90 after warm-up, throughput at a large batch, size on disk."),
    ("Telemetry", "NVML utilisation, memory, power and clocks sampled on a background thread on a GPU; the "
     "worker process's CPU and memory everywhere."),
    ("Devices", "every figure names the device it was taken on; CPU figures are never shown as GPU figures."),
)


class ReportError(ValueError):
    """Runs that cannot be reported (none, unknown ids, an unknown sweep); the message says which."""


def select_runs(store: Store, ids: list[int] | None = None, sweep: str | None = None) -> list[Run]:
    """The runs a report is about, oldest first: the ids given, or every run of a sweep."""
    if sweep:
        runs = store.list(sweep_id=sweep, newest_first=False)
        if not runs:
            raise ReportError(f"no sweep {sweep!r} in {store.home}")
        return runs
    if not ids:
        raise ReportError("name at least one run id, or a sweep")
    runs = store.list(ids=list(dict.fromkeys(int(i) for i in ids)), newest_first=False)
    missing = sorted(set(int(i) for i in ids) - {r.id for r in runs})
    if missing:
        raise ReportError(f"no run {', '.join(f'#{i}' for i in missing)} in {store.home}")
    return runs


def file_name(runs: list[Run], sweep: str | None = None) -> str:
    if sweep:
        return f"optlab-report-{re.sub(r'[^A-Za-z0-9_-]+', '-', sweep)[:60]}.html"
    ids = [str(r.id) for r in runs]
    return "optlab-report-" + ("run-" + ids[0] if len(ids) == 1 else "runs-" + "-".join(ids[:8])
                               + ("-etc" if len(ids) > 8 else "")) + ".html"


@dataclass
class Report:
    html: str
    figures: list[str] = field(default_factory=list)   # the name of every chart drawn, in order


def write_report(store: Store, runs: list[Run], path: str | Path, *, title: str | None = None) -> Report:
    report = build(store, runs, title=title)
    Path(path).write_text(report.html, encoding="utf-8")
    return report


def download(store: Store, run_ids: list[int], *, sweep: str | None = None) -> dict:
    """Keyword arguments for a page's download button: the report is built only when clicked."""
    runs = select_runs(store, run_ids, sweep) if (run_ids or sweep) else []

    def data() -> bytes:
        return build(store, select_runs(store, run_ids, sweep), title=f"Sweep {sweep}" if sweep else None
                     ).html.encode("utf-8")
    return {"data": data, "file_name": file_name(runs, sweep) if runs else "optlab-report.html", "mime": "text/html"}


# -- escaping -------------------------------------------------------------------------------------------
def e(value) -> str:
    """Text for the page: every string from a run goes through here."""
    return html.escape("" if value is None else str(value), quote=True)


def chart_safe(value):
    """A copy of chart data with every string escaped: Plotly draws text with a little HTML of its
    own (it decodes &lt; back to '<' as text), so a label can be seen but never become markup."""
    if isinstance(value, str):
        return html.escape(value, quote=False)
    if isinstance(value, dict):
        return {k: chart_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [chart_safe(v) for v in value]
    return value


# -- formatting ---------------------------------------------------------------------------------------
def _num(value, pattern: str = "{:,.1f}", missing: str = "n/a") -> str:
    return missing if not isinstance(value, (int, float)) or isinstance(value, bool) else pattern.format(value)


def _pct(value, digits: int = 1) -> str:
    return _num(None if value is None else 100 * value, "{:." + str(digits) + "f} %")


def throughput_text(summary: dict) -> tuple[str, str, str]:
    """(median img/s, its 95 % interval and step spread, quality) — 'no interval' for old runs."""
    t = summary.get("throughput")
    value = _num(summary.get("train_images_per_s"), "{:,.0f} img/s")
    if not t or t.get("value") is None:
        return value, "no interval", "not recorded"
    ci = t.get("ci95")
    interval = (f"95 % interval {_num(ci[0], '{:,.0f}')}–{_num(ci[1], '{:,.0f}')}" if ci and None not in ci
                else "no interval")
    spread = f"steps p10–p90 {_num(t.get('p10'), '{:,.0f}')}–{_num(t.get('p90'), '{:,.0f}')}"
    quality = t.get("quality") or "?"
    if t.get("why"):
        quality += f": {t['why']}"
    return value, f"{interval}; {spread} ({t.get('steps', '?')} steady steps)", quality


def _table(headers: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c.html if isinstance(c, Raw) else e(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


@dataclass
class Raw:
    """HTML this module built itself (never text from a run)."""
    html: str


def _device_text(run: Run) -> str:
    return views.device_label(run) or "device not recorded"


# -- the builder ----------------------------------------------------------------------------------------
class _Page:
    def __init__(self):
        self.parts: list[str] = []
        self.figures: list[str] = []

    def add(self, fragment: str) -> None:
        self.parts.append(fragment)

    def figure(self, fig, name: str) -> None:
        """A chart from the shared builders, drawn by the plotly.js inlined once in <head>."""
        n = len(self.figures)
        self.figures.append(name)
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{n}", config=PLOTLY_CONFIG)
        self.add(f'<div class="figure" data-figure="{e(name)}">{div}</div>')


def build(store: Store, runs: list[Run], *, title: str | None = None) -> Report:
    """The report of `runs` as one self-contained HTML page."""
    if not runs:
        raise ReportError("a report needs at least one run")
    page = _Page()
    labels = views.short_labels(runs)
    names = {r.id: (f"{labels[r.id]} · {r.label}" if r.label and r.label not in labels[r.id] else labels[r.id])
             for r in runs}
    title = title or (f"Run #{runs[0].id}" if len(runs) == 1 else f"{len(runs)} runs: " +
                      ", ".join(f"#{r.id}" for r in runs[:12]) + (" …" if len(runs) > 12 else ""))
    _header(page, runs, title)
    _what_was_run(page, runs, names)
    _devices(page, runs, names)
    _headline(page, runs, names)
    done = [r for r in runs if r.status == "done" and r.summary]
    if len(done) > 1:
        _comparison(page, store, done, labels)
    children: dict[int, list[Run]] = {}
    for other in store.list(newest_first=False):
        if other.parent_id is not None:
            children.setdefault(other.parent_id, []).append(other)
    for run in runs:
        _run_section(page, store, run, names[run.id], children.get(run.id, []))
    _how_measured(page)
    return Report(_document(title, "\n".join(page.parts)), page.figures)


def _header(page: _Page, runs: list[Run], title: str) -> None:
    devices = views.devices(runs)
    page.add(f"<header><h1>OptLab report · {e(title)}</h1>"
             f"<p class=meta>Written {e(time.strftime('%Y-%m-%d %H:%M %Z'))} · {len(runs)} run"
             f"{'s' if len(runs) != 1 else ''} · {e(charts.device_note(devices))}</p>")
    if len(devices) > 1:
        page.add('<p class="note warn">These runs were measured on different devices: speed and memory '
                 "differences mix the knobs with the hardware.</p>")
    if devices and not any(d.startswith("GPU") for d in devices):
        page.add(f'<p class="note">All figures are <b>CPU figures</b> ({e(" · ".join(devices))}), not GPU figures.</p>')
    page.add('<nav class=toc>Contents: <a href="#what">what was run</a> · <a href="#devices">devices</a> · '
             '<a href="#figures">headline figures</a>' + (' · <a href="#compare">comparison</a>' if len(runs) > 1 else "")
             + "".join(f' · <a href="#run-{r.id}">#{r.id}</a>' for r in runs[:30])
             + ' · <a href="#measured">how measured</a></nav></header>')


def _what_was_run(page: _Page, runs: list[Run], names: dict) -> None:
    page.add('<section id=what><h2>What was run</h2>')
    rows = []
    for r in runs:
        origin = ""
        if r.origin:
            o = r.origin
            origin = (f"imported from {o.get('host', '?')}:{o.get('store', '?')} run #{o.get('run_id', '?')}"
                      f" on {views.when(o.get('imported_at'))}")
        rows.append([f"#{r.id}", r.label or views.run_name(r), r.user or "", r.status, views.when(r.created_at),
                     _device_text(r), r.sweep_id or "", origin or "measured in this store"])
    page.add(_table(["run", "label", "user", "status", "submitted", "device", "sweep", "origin"], rows))
    varying = views.varying_knobs(runs)
    configs = {r.id: r.config for r in runs}
    if varying:
        page.add("<h3>What differs between the runs</h3>")
        page.add(_table(["setting"] + [f"#{r.id}" for r in runs],
                        [[k] + [json.dumps(configs[r.id].get(k)) for r in runs] for k in varying]))
    same = [k for k in runs[0].config if k not in varying]
    page.add(f"<h3>{'Settings' if len(runs) == 1 else 'The same in every run'}</h3>")
    page.add(_table(["setting", "value", "meaning"],
                    [[k, json.dumps(runs[0].config.get(k)), views.KNOBS[k].label if k in views.KNOBS else ""]
                     for k in same], cls="compact"))
    for r in runs:
        page.add(f"<details><summary>Run #{r.id}: the whole config (JSON, loads with RunConfig.from_json)</summary>"
                 f"<pre>{e(json.dumps(r.config, indent=2, sort_keys=True))}</pre></details>")
    page.add("</section>")


def _devices(page: _Page, runs: list[Run], names: dict) -> None:
    page.add("<section id=devices><h2>Device, driver and software</h2>")
    rows = []
    for r in runs:
        d, s = r.device or {}, r.summary or {}
        v = s.get("versions")
        cap = d.get("capability")
        if v is None:
            driver = "not recorded"
        elif "nvidia_driver" not in v:
            driver = "not recorded (run predates driver recording)"
        else:
            driver = v["nvidia_driver"] or "none (no NVIDIA driver)"
        v = v or {}
        rows.append([f"#{r.id}", _device_text(r), ".".join(map(str, cap)) if cap else "",
                     _num(d.get("total_memory_mb"), "{:,.0f} MB", ""), driver, v.get("cuda") or "",
                     v.get("cudnn") or "", v.get("torch") or "", v.get("torchvision") or "", v.get("python") or "",
                     v.get("os") or "", s.get("torch_threads") or ""])
    page.add(_table(["run", "device", "compute capability", "device memory", "NVIDIA driver", "CUDA (torch build)",
                     "cuDNN", "torch", "torchvision", "python", "OS", "torch threads"], rows))
    page.add("</section>")


def _headline(page: _Page, runs: list[Run], names: dict) -> None:
    page.add("<section id=figures><h2>Headline figures</h2>")
    base = next((r for r in runs if r.status == "done" and r.summary), None)
    rows = []
    for r in runs:
        s = r.summary or {}
        if r.status != "done":
            rows.append([names[r.id], r.status, r.error or "", "", "", "", "", "", "", ""])
            continue
        value, spread, quality = throughput_text(s)
        versus = ""
        if base is not None and r.id != base.id:
            mine = s.get("throughput") or {"value": s.get("train_images_per_s")}
            theirs = base.summary.get("throughput") or {"value": base.summary.get("train_images_per_s")}
            versus = f"against #{base.id}: " + stats.compare(mine, theirs)["text"]
        memory = "GPU allocator" if s.get("memory_kind") == "cuda_allocator" else "host RSS"
        accuracy = _pct(s.get("test_accuracy"), 2) if s.get("accuracy_applies", True) else "n/a (random labels)"
        target = s.get("target_accuracy")
        reached = (_num(s.get("time_to_target_s"), "{:,.1f} s") if s.get("time_to_target_s") is not None
                   else "not reached") + (f" (target {_pct(target, 0)})" if target else "")
        rows.append([names[r.id], value, spread, quality, versus,
                     f"p50 {_num(s.get('step_ms_p50'), '{:,.2f}')} / p90 {_num(s.get('step_ms_p90'), '{:,.2f}')} ms; "
                     f"input wait {_pct(s.get('input_wait_share'))}",
                     accuracy, f"{_num(s.get('peak_memory_mb'), '{:,.0f} MB')} ({memory})",
                     _num(s.get("train_seconds"), "{:,.1f} s"), reached])
    page.add(_table(["run", "training throughput (median)", "spread", "quality", "compared",
                     "step time", "test accuracy", "peak memory", "training time", "time to accuracy"], rows))
    page.add("</section>")


def _comparison(page: _Page, store: Store, runs: list[Run], labels: dict) -> None:
    """The Compare page's charts, from the same builders and the same rows."""
    page.add(f"<section id=compare><h2>Comparison</h2><p>Speed-ups are against #{runs[0].id}, the first run.</p>")
    sweeps = {r.sweep_id for r in runs}
    if len(sweeps) == 1 and ladder.is_ladder(next(iter(sweeps))):   # a ladder reads rung by rung first
        climbed = ladder.rows(runs)
        page.figure(charts.ladder_bars(chart_safe(climbed)), "ladder")
        table = ladder.table(climbed)
        columns = ["rung", "runs", "images/s", "x baseline", "x baseline 95 %", "x rung below", "x rung below 95 %",
                   "this rung", "peak MB", "accuracy %"]
        page.add(_table(columns, [[_num(t[c], "{:,.2f}") if isinstance(t[c], float) else t[c] for c in columns]
                                  for t in table], cls="compact"))
        page.add("<ul>" + "".join(f"<li>{e(line)}</li>" for line in ladder.lesson(climbed)) + "</ul>")
    rows = chart_safe(views.figure_rows(runs))
    page.figure(charts.pareto_scatter(rows), "pareto")
    page.figure(charts.speedup_bars(rows, rows[0]), "speed-up")
    page.figure(charts.memory_bars(rows), "memory")
    curves = views.epoch_curves(store, [r.id for r in runs])
    targets = {r.config.get("target_accuracy") for r in runs}
    page.figure(charts.accuracy_curves(chart_safe(
        [{"label": labels[r.id], "device_label": views.device_label(r), "epochs": curves[r.id]} for r in runs]),
        target=targets.pop() if len(targets) == 1 else None), "accuracy curves")
    # compression steps are a list, not one value an axis can hold (figure_rows leaves them out)
    knobs = [k for k in views.varying_knobs(runs) if k != "compress"]
    if knobs:
        page.figure(charts.parallel_knobs(rows, [(f"knob:{k}", k) for k in chart_safe(knobs)], OUTCOMES),
                    "knobs to outcomes")
    page.add("</section>")


def _run_section(page: _Page, store: Store, run: Run, name: str, children: list[Run]) -> None:
    s = run.summary or {}
    label = chart_safe(views.device_label(run))
    page.add(f'<section id="run-{run.id}" class=run><h2>Run {e(name)}</h2>'
             f"<p class=meta>{e(run.status)} · {e(_device_text(run))}"
             + (f" · by {e(run.user)}" if run.user else "") + "</p>")
    if run.error:
        page.add(f'<p class="note warn">{e(run.status.capitalize())}: {e(run.error)}</p>')
    if run.status == "done":
        page.add(_table(["figure", "value", "what it means"], [list(h) for h in views.headline(run)], cls="compact"))
        per_epoch = [{"step": x["epoch"], "loss": x.get("train_loss"), "images_per_s": x.get("images_per_s")}
                     for x in store.metrics(run.id, "epoch")]
        if len(per_epoch) > 1:
            fig = charts.training_progress(per_epoch, label)
            fig.update_xaxes(title_text="Epoch")    # as the Runs page draws a finished run
            page.figure(fig, f"#{run.id} training by epoch")
        ranks = distributed_rows(run, store)
        if ranks:
            page.add("<h3>Data-parallel ranks</h3>" + _table(["", "value"], [list(r) for r in ranks], cls="compact"))
    samples = store.metrics(run.id, "telemetry")
    if samples:
        page.figure(charts.telemetry(samples, label), f"#{run.id} telemetry")
    for window, key in (("Training", "profile"), ("Inference", "profile_inference")):
        if s.get(key):
            _profile(page, run, s[key], window, label)
    if run.status == "done" and not s.get("profile"):
        page.add(f"<p class=note>No profile: {e(_why_no_profile(store, run))}</p>")
    _advice(page, store, run, children)
    if s.get("variants"):
        _variants(page, run, s["variants"], name)
    _events(page, store, run)
    page.add("</section>")


def _why_no_profile(store: Store, run: Run) -> str:
    if not run.config.get("profile", True):
        return "profiling was off for this run"
    skipped = [x["message"] for x in store.events(run.id) if x["message"].startswith("no profile")]
    return skipped[-1] if skipped else "no profile summary was recorded"


def _profile(page: _Page, run: Run, profile: dict, window: str, label: str | None) -> None:
    util, host, tc = profile.get("utilisation") or {}, profile.get("host") or {}, profile.get("tensor_cores") or {}
    gpu = profile_charts.on_gpu(profile)
    page.add(f"<h3>Profile: {window.lower()} window ({e(profile_charts.what_was_timed(profile))}, "
             f"{e(profile.get('steps'))} steps)</h3>")
    if profile.get("reason"):
        page.add(f"<p class=note>{e(profile['reason'])}</p>")
    outside = (host["step_ms"] - host["device_ms"]) if isinstance(host.get("step_ms"), (int, float)) and \
        isinstance(host.get("device_ms"), (int, float)) else None
    page.add(_table(["busy vs idle", "step (wall)", "host per step" if gpu else "outside operators per step",
                     "Tensor Core share"], [[
        f"{'GPU busy' if gpu else 'inside operators'} {_pct(util.get('busy_share'), 0)}, idle {_pct(util.get('idle_share'), 0)}",
        _num(host.get("step_ms"), "{:,.1f} ms"),
        _num(host.get("host_ms") if gpu else outside, "{:,.1f} ms"),
        _pct(tc.get("share"), 0) if tc.get("share") is not None else f"n/a ({tc.get('reason') or 'not measured'})"]],
        cls="compact"))
    figures = profile_charts.profile_figures(chart_safe(profile), label)
    page.add('<div class="grid">')
    for key, fig in figures.items():
        page.figure(fig, f"#{run.id} {window.lower()} profile: {key}")
    page.add("</div>")
    if "memory" not in figures and profile.get("memory_reason"):
        page.add(f"<p class=note>{e(profile['memory_reason'])}</p>")
    top = profile_charts.top_rows(profile)
    if top:
        page.add(f"<h4>Top {e(profile.get('top_kind', 'operators'))}</h4>")
        headers = list(top[0])
        page.add(_table(headers, [[_cell(row[h]) for h in headers] for row in top], cls="compact"))
    defs = list((profile.get("definitions") or {}).values())
    if tc.get("heuristic"):
        defs.append("Tensor Cores: " + tc["heuristic"])
    if defs:
        page.add("<details><summary>How these profile figures are defined</summary><ul>"
                 + "".join(f"<li>{e(d)}</li>" for d in defs) + "</ul></details>")


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return "" if value is None else str(value)


def _advice(page: _Page, store: Store, run: Run, children: list[Run]) -> None:
    """The advisor's rules on this run, and the runs that tried one: predicted against measured."""
    items = advisor.advise(run.summary, run.config, run.device)
    outcomes = [(c, advisor.advice_outcome(store, c.id)) for c in children if store.metrics(c.id, "advice")]
    if not items and not outcomes:
        return
    page.add("<h3>What to try next, and the evidence</h3>")
    for a in items:
        evidence = _table(["figure", "value"], [[k, json.dumps(v)] for k, v in a.evidence.items()], cls="compact")
        change = f"<p>Change: <code>{e(advisor.describe_change(a.change))}</code></p>" if a.change else ""
        page.add(f'<div class=card><p><b>{e(a.title)}</b> — {e(a.why)}</p>'
                 f"<p>Expected: <b>{e(a.expected)}</b><br><small>{e(a.prediction_source)}</small></p>"
                 f"{change}<details open><summary>Evidence</summary>{evidence}</details></div>")
    if outcomes:
        page.add("<h4>Tried: predicted against measured</h4>")
        rows = []
        for child, o in outcomes:
            if o is None:
                rows.append([f"#{child.id}", child.label or "", "", "", child.status + (f" ({child.error})" if child.error else ""), ""])
                continue
            rows.append([f"#{child.id}", o["title"], advisor.describe_change(o["change"]), o["predicted"],
                         _num(o["measured_factor"], "x{:.2f}") + f" {o['metric'] or ''}",
                         (o["device_label"] or "") + ("" if o["same_device"] else " (NOT the parent's device)")])
        page.add(_table(["run", "advice", "change", "predicted", "measured", "device"], rows))


def _variants(page: _Page, run: Run, variants: list[dict], name: str) -> None:
    from optlab.variant_charts import variants_figure
    page.add("<h3>Compressed variants</h3>")
    page.figure(variants_figure(chart_safe(variants), title=chart_safe(f"{name}: variants, accuracy vs latency")),
                f"#{run.id} variants")
    rows = []
    for v in variants:
        rows.append([v.get("name"), v.get("device_label"), _pct(v.get("test_accuracy"), 2),
                     f"{_num(v.get('latency_ms_p50'), '{:.3f}')} / {_num(v.get('latency_ms_p90'), '{:.3f}')}",
                     _num(v.get("throughput_images_per_s"), "{:,.0f}") + (f" at batch {v['throughput_batch']}"
                                                                          if v.get("throughput_batch") else ""),
                     _num(v.get("size_mb"), "{:.2f}"),
                     f"{_num(v.get('params'), '{:,}')} ({_num(v.get('nonzero_params'), '{:,}')} non-zero)",
                     v.get("layers_converted") or "", v.get("error") or "; ".join(v.get("notes") or [])])
    page.add(_table(["variant", "device", "accuracy", "batch-1 latency p50 / p90 (ms)", "throughput (img/s)",
                     "size (MB)", "parameters", "layers", "notes"], rows, cls="compact"))


def _events(page: _Page, store: Store, run: Run) -> None:
    events = store.events(run.id)
    if run.log_tail and run.status == "failed":
        page.add(f"<details open><summary>Log tail</summary><pre>{e(run.log_tail)}</pre></details>")
    if events:
        important = sum(x["level"] != "info" for x in events)
        page.add(f"<details><summary>Events ({len(events)}, {important} warnings or errors)</summary><ul class=events>"
                 + "".join(f"<li class={e(x['level'])}><pre>{e(views.when(x['t']))} {e(x['level'])}: "
                           f"{e(x['message'])}</pre></li>" for x in events) + "</ul></details>")


def _how_measured(page: _Page) -> None:
    page.add("<section id=measured><h2>How these were measured</h2><dl>"
             + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in MEASURED) + "</dl></section>")


# -- the page -----------------------------------------------------------------------------------------------
_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 1280px;
       margin: 0 auto; padding: 0 24px 48px; }
h1 { font-size: 26px; margin: 24px 0 4px; } h2 { border-bottom: 2px solid #3B7DD8; padding-bottom: 4px; margin-top: 36px; }
h3 { margin-top: 26px; } .meta { color: #555; margin: 2px 0 12px; }
table { border-collapse: collapse; margin: 8px 0 16px; width: 100%; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f6fb; } table.compact { width: auto; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 12px; }
.note { background: #eef4fd; border-left: 4px solid #3B7DD8; padding: 8px 12px; }
.warn { background: #fff4e5; border-left-color: #E8743B; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 4px 14px; margin: 10px 0; }
.figure { margin: 8px 0 20px; } .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 0 16px; }
nav.toc { margin: 8px 0 0; font-size: 14px; } ul.events { list-style: none; padding-left: 0; }
li.warning pre { color: #a15c00; } li.error pre { color: #b00020; }
dt { font-weight: 600; margin-top: 8px; } dd { margin-left: 18px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  nav.toc, .modebar-container { display: none !important; }
  .grid { display: block; }
  table { font-size: 8.5pt; } th, td { padding: 2px 4px; overflow-wrap: anywhere; }  /* fit the paper's width */
  .figure, table, .card, dl { break-inside: avoid; page-break-inside: avoid; }
  section.run { break-before: page; }
  h2, h3 { break-after: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""

# Print: open every folded section and redraw the charts at the paper's width.
_SCRIPT = """
function optlabFitPlots() {
  document.querySelectorAll('.js-plotly-plot').forEach(function (p) { Plotly.Plots.resize(p); });
}
window.addEventListener('beforeprint', function () {
  document.querySelectorAll('details').forEach(function (d) { d.setAttribute('open', ''); });
  optlabFitPlots();
});
window.addEventListener('afterprint', optlabFitPlots);
"""


def _document(title: str, body: str) -> str:
    from plotly.offline import get_plotlyjs
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<meta name=generator content=OptLab><title>OptLab report · {e(title)}</title>"
            f"<style>{_CSS}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script>'
            f"<script>{_SCRIPT}</script></head>\n<body>\n{body}\n</body></html>\n")
