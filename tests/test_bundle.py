"""Bundles: the two real runs of tests/test_report.py exported, imported into a fresh OPTLAB_HOME
(the same figures on Compare), imported again (no duplicates), and hostile bundles refused with
the reason and nothing imported."""
import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from optlab import bundle, cli
from optlab.bundle import BundleError, Limits, export_bundle, import_bundle
from optlab.store import Store
from test_report import ROOT, shared_runs, tried  # noqa: F401  (the session's real runs)


@pytest.fixture(scope="session")
def exported(shared_runs, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("bundle") / "runs.zip"
    out = export_bundle(shared_runs, [1, 2], path, traces=True, weights=True)
    assert out["runs"] == [1, 2]
    return path


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def write_zip(path, files: dict[str, bytes], *, modes: dict[str, int] | None = None):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (modes or {}).get(name, 0o100644) << 16
            zf.writestr(info, data)
    return path


def fresh(tmp_path, name="fresh") -> Store:
    return Store(tmp_path / name)


def nothing_imported(store: Store) -> bool:
    leftovers = [p.name for p in store.home.iterdir() if p.name.startswith(".import-")]
    return store.list() == [] and not (store.home / "runs").exists() and leftovers == []


def without_paths(summary: dict) -> dict:
    """A summary less what names a place on one machine (rewritten by an import)."""
    s = {k: v for k, v in summary.items() if k not in ("weights_path", "trace_dir")}
    for key in ("profile", "profile_inference"):
        if s.get(key):
            s[key] = {k: v for k, v in s[key].items() if k != "trace_file"}
    if s.get("variants"):
        s["variants"] = [{k: v for k, v in x.items() if k != "artifact"} for x in s["variants"]]
    return s


# -- the round trip ------------------------------------------------------------------------------------
def test_an_imported_run_holds_the_same_records_marked_with_its_origin(shared_runs, exported, tmp_path):  # noqa: F811
    here = fresh(tmp_path)
    result = import_bundle(here, exported)
    assert result.imported == [(1, 1), (2, 2)] and result.skipped == []
    for run_id in (1, 2):
        mine, theirs = shared_runs.get(run_id), here.get(run_id)
        assert (theirs.config, theirs.status, theirs.user, theirs.label, theirs.device) == \
               (mine.config, mine.status, mine.user, mine.label, mine.device)
        assert without_paths(theirs.summary) == without_paths(mine.summary)
        assert bundle.metric_rows(here, run_id) == bundle.metric_rows(shared_runs, run_id)
        assert here.events(run_id)[:-1] == shared_runs.events(run_id)
        assert here.events(run_id)[-1]["message"].startswith("imported from ")
        assert theirs.origin["run_id"] == run_id and theirs.origin["store"] == str(shared_runs.home)
        assert theirs.origin["imported_at"] > mine.finished_at
    from optlab.compress.checkpoint import load_weights
    assert set(load_weights(here.get(1).summary["weights_path"])) == set(load_weights(shared_runs.get(1).summary["weights_path"]))
    from optlab.profiling import run_trace_dir, summarize_trace_file, trace_files
    [train] = trace_files(run_trace_dir(here, here.get(1)), "train")
    assert summarize_trace_file(train)["steps"] == shared_runs.get(1).summary["profile"]["steps"]


def test_compare_draws_the_same_figures_from_the_imported_runs(shared_runs, exported, tmp_path, monkeypatch):  # noqa: F811
    from streamlit.testing.v1 import AppTest
    here = fresh(tmp_path)
    import_bundle(here, exported)
    monkeypatch.setenv("OPTLAB_SCHEDULER", "0")
    specs = []
    for home in (shared_runs.home, here.home):
        monkeypatch.setenv("OPTLAB_HOME", str(home))
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
        at.switch_page("app_pages/compare.py").run()
        assert not at.exception, [x.value for x in at.exception]
        specs.append([json.loads(c.proto.spec) for c in at.get("plotly_chart")])
    assert len(specs[0]) >= 5 and specs[0] == specs[1]


def test_importing_again_adds_nothing(shared_runs, exported, tmp_path):  # noqa: F811
    here = fresh(tmp_path)
    import_bundle(here, exported)
    again = import_bundle(here, exported)
    assert again.imported == [] and again.skipped == [(1, 1), (2, 2)]
    assert len(here.list()) == 2
    back_home = import_bundle(shared_runs, exported)            # to the store it came from: already there
    assert back_home.imported == [] and len(shared_runs.list()) == 2


def test_a_bundle_passed_on_keeps_its_first_origin(exported, tmp_path):
    second = fresh(tmp_path, "second")
    import_bundle(second, exported)
    onward = export_bundle(second, [1, 2], tmp_path / "onward.zip")
    third = fresh(tmp_path, "third")
    import_bundle(third, exported)
    assert import_bundle(third, onward["path"]).imported == []    # the same runs, whoever passed them on


def test_tried_advice_keeps_its_parent_or_the_parents_recorded_figure(tried, tmp_path):  # noqa: F811
    from optlab import advisor
    store, child = tried
    measured = advisor.advice_outcome(store, child)["measured_factor"]
    both = fresh(tmp_path, "both")
    import_bundle(both, export_bundle(store, [2, child], tmp_path / "both.zip")["path"])
    [new_parent, new_child] = sorted(r.id for r in both.list())
    assert both.get(new_child).parent_id == new_parent
    assert advisor.advice_outcome(both, new_child)["measured_factor"] == pytest.approx(measured)
    alone = fresh(tmp_path, "alone")                             # the child without its parent
    import_bundle(alone, export_bundle(store, [child], tmp_path / "alone.zip")["path"])
    [only] = alone.list()
    assert only.parent_id is None
    assert advisor.advice_outcome(alone, only.id)["measured_factor"] == pytest.approx(measured)


def test_the_commands_export_and_import(shared_runs, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("OPTLAB_HOME", str(shared_runs.home))
    assert cli.main(["export", "2", "-o", str(tmp_path / "two.zip")]) == 0
    assert "run(s) #2" in capsys.readouterr().out
    monkeypatch.setenv("OPTLAB_HOME", str(tmp_path / "elsewhere"))
    assert cli.main(["import", str(tmp_path / "two.zip")]) == 0
    assert "imported #1 (was #2)" in capsys.readouterr().out
    write_zip(tmp_path / "bad.zip", {"../evil": b"x"})
    assert cli.main(["import", str(tmp_path / "bad.zip")]) == 2
    assert "refused, nothing imported" in capsys.readouterr().err


def test_only_finished_runs_are_exported(store, tmp_path):
    from conftest import tiny_config
    queued = store.submit(tiny_config())
    with pytest.raises(BundleError, match="is queued: only finished runs"):
        export_bundle(store, [queued], tmp_path / "x.zip")


# -- refusals ---------------------------------------------------------------------------------------
def _run_json(files, change):
    record = json.loads(files["runs/1/run.json"])
    change(record)
    return {**files, "runs/1/run.json": json.dumps(record).encode()}


class Planted:
    """Would create a folder when unpickled: the test checks it never appears."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def _weights_with_code(files, tmp_path):
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "extra": Planted(str(tmp_path / "pwned"))}, buffer)
    return {**files, "runs/1/model.pt": buffer.getvalue()}


REFUSALS = {
    "a path that climbs out": (lambda f, t: {**f, "runs/1/../../escaped.json": b"{}"}, "climbs out of its folder"),
    "an absolute path": (lambda f, t: {**f, "/etc/cron.d/optlab": b"x"}, "absolute path"),
    "a name outside the layout": (lambda f, t: {**f, "runs/1/evil.pkl": pickle.dumps({"a": 1})},
                                  "not part of a bundle's layout"),
    "a wrong type": (lambda f, t: _run_json(f, lambda r: r["summary"].update(train_images_per_s="fast")),
                     "summary.train_images_per_s: expected a number, got a string"),
    "a missing key": (lambda f, t: _run_json(f, lambda r: r.pop("config")), "missing required key(s) config"),
    "a setting this OptLab does not know": (lambda f, t: _run_json(f, lambda r: r["config"].update(rm_rf=True)),
                                            "unknown key(s) rm_rf"),
    "a run that would be queued here": (lambda f, t: _run_json(f, lambda r: r.update(status="queued")),
                                        "status: expected one of 'done'"),
    "a pickle instead of JSON": (lambda f, t: {**f, "runs/1/events.json": pickle.dumps([])}, "is a Python pickle"),
    "weights that carry code": (_weights_with_code, "not a plain state dict of tensors"),
    "a metric of an unknown kind": (lambda f, t: {**f, "runs/1/metrics.json": json.dumps(
        [{"kind": "shell", "t": 1.0, "step": None, "data": {}}]).encode()}, "[0].kind: expected one of"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_hostile_bundle_is_refused_with_the_reason_and_nothing_imported(case, exported, tmp_path):
    change, reason = REFUSALS[case]
    path = write_zip(tmp_path / "hostile.zip", change(members(exported), tmp_path))
    here = fresh(tmp_path)
    with pytest.raises(BundleError) as refused:
        import_bundle(here, path)
    assert reason in str(refused.value)
    assert nothing_imported(here)
    assert not (tmp_path / "pwned").exists()


def test_an_oversize_member_is_refused_by_what_it_holds_not_by_its_header(exported, tmp_path):
    here = fresh(tmp_path)
    small = Limits(record=4096)
    with pytest.raises(BundleError, match="over the limit of|larger than the limit of"):
        import_bundle(here, exported, limits=small)
    assert nothing_imported(here)
    # a header that claims a small size gets the member refused as damaged, never read past the cap
    with zipfile.ZipFile(exported) as zf:
        big = next(i for i in zf.infolist() if i.filename == "runs/1/metrics.json")
        assert big.file_size > 4096
        big.file_size = 10
        with pytest.raises(BundleError, match="damaged"):
            bundle._read(zf, big, 4096)


def test_links_and_devices_are_refused(exported, tmp_path):
    for mode, kind in ((0o120777, "a symbolic link"), (0o020644, "a device"), (0o010644, "a FIFO")):
        files = {**members(exported), "runs/1/traces/x.pt.trace.json": b"/etc/passwd"}
        path = write_zip(tmp_path / "links.zip", files, modes={"runs/1/traces/x.pt.trace.json": mode})
        here = fresh(tmp_path, f"links-{mode}")
        with pytest.raises(BundleError, match=kind):
            import_bundle(here, path)
        assert nothing_imported(here)


def test_a_failure_while_placing_files_undoes_the_whole_import(exported, tmp_path):
    here = fresh(tmp_path)
    (here.home / "runs" / "2").mkdir(parents=True)              # where the second run's files would go
    with pytest.raises(BundleError, match="exists already"):
        import_bundle(here, exported)
    assert here.list() == [] and not (here.home / "runs" / "1").exists()
    assert [p.name for p in here.home.iterdir() if p.name.startswith(".import-")] == []
    with here.connect() as db:
        assert db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0


# -- the Runs page's upload --------------------------------------------------------------------------
def test_the_runs_page_imports_an_uploaded_bundle_and_marks_where_runs_came_from(exported, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("OPTLAB_HOME", str(tmp_path / "page"))
    monkeypatch.setenv("OPTLAB_SCHEDULER", "0")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    at.switch_page("app_pages/runs.py").run()
    at.file_uploader(key="runs_bundle").upload("hostile.zip", b"not a zip", "application/zip").run()
    at.button(key="runs_import").click().run()
    assert not at.exception, [x.value for x in at.exception]
    assert at.error and "not a bundle" in at.code[0].value
    at.file_uploader(key="runs_bundle").upload("runs.zip", exported.read_bytes(), "application/zip").run()
    at.button(key="runs_import").click().run()
    assert not at.exception, [x.value for x in at.exception]
    assert at.success and "imported #1 (was #1), #2 (was #2)" in at.code[0].value
    history = at.dataframe[0].value
    host = json.loads(members(exported)["optlab-bundle.json"])["origin"]["host"]
    assert sorted(history["from"]) == [f"{host} run #1", f"{host} run #2"]
