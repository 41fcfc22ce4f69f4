"""Sharing from the command line: `python -m optlab report|export|import`.

    report ID [ID ...] | --sweep NAME  [-o FILE.html]     one offline HTML report (optlab.report)
    export ID [ID ...] -o FILE [--traces] [--weights]     runs packed into a bundle (optlab.bundle)
    import FILE                                           a bundle's runs into this store

Registered on import by optlab.cli. None of them imports torch except an import of weights,
which are checked with torch.load(weights_only=True).
"""
from __future__ import annotations

import sys

from optlab.cli import command, get_store


def _add_report(p):
    p.add_argument("ids", type=int, nargs="*", metavar="ID", help="runs to report on, in this order")
    p.add_argument("--sweep", help="report on every run of this sweep instead")
    p.add_argument("-o", "--output", help="the HTML file to write (default: optlab-report-<runs>.html here)")
    p.add_argument("--title", help="the report's title (default: the runs or the sweep)")


def _report(args) -> int:
    from optlab import report
    if bool(args.ids) == bool(args.sweep):
        print("error: name run ids or --sweep NAME (one of the two)", file=sys.stderr)
        return 2
    store = get_store()
    try:
        runs = report.select_runs(store, args.ids, args.sweep)
    except report.ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = args.output or report.file_name(runs, args.sweep)
    written = report.write_report(store, runs, path, title=args.title or (f"Sweep {args.sweep}" if args.sweep else None))
    size = len(written.html.encode("utf-8"))
    print(f"wrote {path}: {len(runs)} run(s), {len(written.figures)} charts, {size / 2**20:.1f} MiB "
          "(opens offline in any browser)")
    return 0


command("report")((_add_report, _report))


def _add_export(p):
    p.add_argument("ids", type=int, nargs="+", metavar="ID", help="finished runs to export")
    p.add_argument("-o", "--output", required=True, help="the bundle to write (a .zip file)")
    p.add_argument("--traces", action="store_true", help="include the profiler trace files")
    p.add_argument("--weights", action="store_true", help="include the trained weights (model.pt)")


def _export(args) -> int:
    from optlab.bundle import BundleError, export_bundle
    try:
        out = export_bundle(get_store(), args.ids, args.output, traces=args.traces, weights=args.weights)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out['path']}: run(s) {', '.join(f'#{i}' for i in out['runs'])}, {out['bytes'] / 2**20:.2f} MiB")
    for reason in out["left_out"]:
        print(f"  left out: {reason}")
    return 0


command("export")((_add_export, _export))


def _add_import(p):
    p.add_argument("file", help="a bundle written by `python -m optlab export`")


def _import(args) -> int:
    from optlab.bundle import BundleError, import_bundle
    try:
        result = import_bundle(get_store(), args.file)
    except (BundleError, OSError) as e:
        print(f"refused, nothing imported: {e}", file=sys.stderr)
        return 2
    print(result.message())
    return 0


command("import")((_add_import, _import))
