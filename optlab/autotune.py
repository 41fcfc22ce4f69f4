"""The accuracy-budget autotuner: the fastest configuration that loses at most X points of accuracy
against a reference run, searched by Optuna, each trial an ordinary OptLab run in the queue.

A tuning is an Optuna study kept in the store's own SQLite file (Optuna's tables sit beside
OptLab's), plus one row in the store's `tunings` table, so the scheduler finds the tunings under way
without loading Optuna. Each scheduler round calls `advance_all`:

1. every trial whose run finished is told to the study: the objective's speed figure as its value,
   and the accuracy against the budget as its constraint (TPE learns where the budget holds);
   a failed or cancelled run is told as failed, with the reason kept on the trial;
2. while trials and minutes are left, new trials are asked for and queued, `parallel` at a time;
3. then the winner and the runner-up are run again, `confirm` times each, interleaved, so how sure we
   are that the winner beats the runner-up is an interval between repeats, not the luck of one run.

The figures are read back from the runs (`result`), never stored a second time. Objectives:
`training` (training throughput of the run, knobs of training) and `inference` (batch-1 latency of the
model as deployed, one compression step per trial). Optuna is imported only here, and only when a
tuning exists.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field

from optlab import repeats
from optlab.config import ConfigError, RunConfig, TRAIN_IMAGES
from optlab.naming import knob_word
from optlab.registry import Registry
from optlab.stats import compare, summarize_repeats

PREFIX = "tune-"
MAX_TRIALS = 40
MAX_REPEATED = 25   # settings the sampler proposes again in one round before the space counts as exhausted
STATES = ("searching", "confirming", "done", "stopped")
ACTIVE = ("searching", "confirming")


# -- what is searched ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Knob:
    """One dimension of the search: `choices(reference, info)` lists the values that can run on the
    device, `apply(config, value)` returns the trial's config with that value."""
    name: str
    title: str
    choices: object
    apply: object


def _precisions(ref: RunConfig, info) -> list:
    if not info.is_gpu:
        return ["fp32", "bf16"]
    out = ["fp32"]
    if info.capability is None or info.capability >= (8, 0):
        out.append("tf32")
    out.append("bf16" if info.supports_bf16 else "fp16")
    return out


def _batch_sizes(ref: RunConfig, info) -> list:
    """Half, the same, double and four times the reference batch, each leaving at least 16 steps an
    epoch (fewer cannot be timed or learn; optlab.batchsize keeps the same bound for 'auto')."""
    base = ref.batch_size if isinstance(ref.batch_size, int) else 128
    images = ref.limit_train or TRAIN_IMAGES.get(ref.dataset) or 8192
    return sorted({b for b in (base // 2, base, base * 2, base * 4) if b >= 8 and images // b >= 16} or {base})


_QUICK = {"method": "benchmark"}
COMPRESSIONS = {   # inference: one step per trial, named as the variant chart names it
    "none": None,
    "prune 30%": {"method": "prune_unstructured", "sparsity": 0.3},
    "prune 50%": {"method": "prune_unstructured", "sparsity": 0.5},
    "prune 70%": {"method": "prune_unstructured", "sparsity": 0.7},
    "channel-prune 25%": {"method": "prune_structured", "ratio": 0.25},
    "channel-prune 50%": {"method": "prune_structured", "ratio": 0.5},
    "int8 dynamic": {"method": "int8_dynamic"},
    "int8 static": {"method": "int8_static"},
    "fp16 weights": {"method": "half_precision", "dtype": "fp16"},
    "bf16 weights": {"method": "half_precision", "dtype": "bf16"},
    "ONNX Runtime": {"method": "export_onnx"},
    "OpenVINO": {"method": "export_openvino"},
    "OpenVINO int8": {"method": "openvino_int8"},
}


def _compressions(ref: RunConfig, info) -> list:
    from optlab.compress.base import METHODS
    return [name for name, step in COMPRESSIONS.items()
            if step is None or (step["method"] in METHODS and METHODS.get(step["method"]).unavailable(info, step) is None)]


def _with_compression(cfg: RunConfig, name: str) -> RunConfig:
    bench = [s for s in cfg.compress if s.get("method") == "benchmark"][:1] or [dict(_QUICK)]
    step = COMPRESSIONS[name]
    return cfg.replace(compress=bench + ([dict(step)] if step else []))


KNOBS: Registry[Knob] = Registry("knob")
for knob in (
    Knob("precision", "precision", _precisions, lambda c, v: c.replace(precision=v)),
    Knob("channels_last", "memory format", lambda r, i: [False, True], lambda c, v: c.replace(channels_last=v)),
    Knob("pipeline", "input pipeline", lambda r, i: ["cpu", "gpu"], lambda c, v: c.replace(pipeline=v)),
    Knob("batch_size", "batch size", _batch_sizes, lambda c, v: c.replace(batch_size=v)),
    Knob("compile", "torch.compile", lambda r, i: [False, True], lambda c, v: c.replace(compile=v)),
    Knob("compression", "compression step", _compressions, _with_compression),
):
    KNOBS.add(knob.name, knob)


# -- what is measured ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    key: str
    title: str            # "training throughput"
    unit: str
    higher_is_better: bool
    knobs: tuple          # the default knobs it searches

    def figures(self, run) -> tuple[float | None, float | None, tuple | None]:
        """(speed, accuracy, the speed's within-run 95 % interval) of a finished run."""
        s = run.summary or {}
        if self.key == "training":
            return s.get("train_images_per_s"), s.get("test_accuracy"), (s.get("throughput") or {}).get("ci95")
        variants = s.get("variants") or []
        made = [v for v in variants if v.get("name") != "baseline" and not v.get("error")]
        chosen = made[-1] if made else next((v for v in variants if v.get("name") == "baseline"), None)
        if chosen is None:
            return None, None, None
        return chosen.get("latency_ms_p50"), chosen.get("test_accuracy"), chosen.get("latency_ms_ci95")


OBJECTIVES: Registry[Objective] = Registry("objective")
OBJECTIVES.add("training", Objective("training", "training throughput", "images/s", True,
                                     ("precision", "channels_last", "pipeline", "batch_size", "compile")))
OBJECTIVES.add("inference", Objective("inference", "batch-1 latency of the deployed model", "ms", False,
                                      ("compression",)))


# -- a tuning -------------------------------------------------------------------------------------------
@dataclass
class Spec:
    reference: int                 # the run whose accuracy sets the budget and whose settings are tuned
    budget_points: float           # accuracy points (of 100) a trial may lose against the reference
    objective: str = "training"
    knobs: list = field(default_factory=list)   # empty: the objective's defaults
    trials: int = 12
    minutes: float | None = None   # stop asking for trials after this long
    parallel: int = 1              # trials queued at a time
    confirm: int = 3               # runs each of the winner and the runner-up get at the end (0: none)
    seed: int = 0

    def check(self) -> "Spec":
        errors = []
        if self.objective not in OBJECTIVES:
            errors.append(f"objective {self.objective!r} is not one of: {', '.join(OBJECTIVES.names())}")
        unknown = [k for k in self.knobs if k not in KNOBS]
        if unknown:
            errors.append(f"unknown knob(s) {', '.join(map(str, unknown))}; choose from: {', '.join(KNOBS.names())}")
        if self.objective == "training" and "compression" in self.knobs:
            errors.append("compression steps do not change training throughput: search them with the "
                          "inference objective (batch-1 latency of the deployed model)")
        if not (isinstance(self.budget_points, (int, float)) and 0 <= self.budget_points <= 100):
            errors.append(f"the accuracy budget is 0..100 points, not {self.budget_points!r}")
        if not (isinstance(self.trials, int) and 1 <= self.trials <= MAX_TRIALS):
            errors.append(f"trials must be 1..{MAX_TRIALS}, not {self.trials!r}")
        if self.minutes is not None and not (0 < self.minutes <= 24 * 60):
            errors.append(f"minutes must be more than 0 and at most a day, not {self.minutes!r}")
        if not (isinstance(self.parallel, int) and 1 <= self.parallel <= 8):
            errors.append(f"parallel trials must be 1..8, not {self.parallel!r}")
        if not (isinstance(self.confirm, int) and 0 <= self.confirm <= 10):
            errors.append(f"confirmation runs must be 0..10, not {self.confirm!r}")
        if errors:
            raise ConfigError("; ".join(errors))
        return self

    @property
    def searched(self) -> list[str]:
        return list(self.knobs) or list(OBJECTIVES.get(self.objective).knobs)


@dataclass
class Tuning:
    id: str
    created_at: float
    user: str
    spec: Spec
    state: str
    note: str | None
    confirm_ids: list


def new_tuning_id() -> str:
    return PREFIX + uuid.uuid4().hex[:8]


_STORAGES: dict = {}   # store file -> its Optuna storage, opened once per process


def _storage(store):
    """Optuna's storage in the store's own SQLite file (its tables beside OptLab's)."""
    import optuna
    key = str(store.path)
    if key not in _STORAGES:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _STORAGES[key] = optuna.storages.RDBStorage(f"sqlite:///{store.path}",
                                                    engine_kwargs={"connect_args": {"timeout": 30}})
    return _STORAGES[key]


def _study(store, tuning: Tuning):
    import optuna
    objective = OBJECTIVES.get(tuning.spec.objective)
    # TPE reads each finished trial's constraint (set in `_tell`): it learns where the budget holds.
    # Seeded past the trials so far: a sampler made again with the same seed (the next round, or
    # another process) would draw the same first settings again.
    storage = _storage(store)
    try:
        asked = len(storage.get_all_trials(storage.get_study_id_from_name(tuning.id), deepcopy=False))
    except KeyError:
        asked = 0
    sampler = optuna.samplers.TPESampler(seed=tuning.spec.seed + asked, n_startup_trials=min(5, tuning.spec.trials))
    return optuna.create_study(storage=storage, study_name=tuning.id, sampler=sampler, load_if_exists=True,
                               direction="maximize" if objective.higher_is_better else "minimize")


def start(store, spec: Spec, *, user: str = "", device_for=None) -> Tuning:
    """Check the spec and the reference run, record the tuning, create its study and queue its first
    trials. Raises ConfigError with the reason; nothing is recorded then."""
    spec.check()
    ref = store.get(spec.reference)
    if ref is None:
        raise ConfigError(f"there is no run #{spec.reference} to tune against")
    if ref.status != "done" or (ref.summary or {}).get("test_accuracy") is None:
        raise ConfigError(f"run #{ref.id} has not finished with an accuracy ({ref.status}); tune against a finished run")
    objective = OBJECTIVES.get(spec.objective)
    if objective.figures(ref)[0] is None and spec.objective == "training":
        raise ConfigError(f"run #{ref.id} has no {objective.title} to tune")
    ref_config = RunConfig.from_dict(ref.config)
    info = device_for(ref_config) if device_for else None
    if info is not None:
        for name in spec.searched:
            if len(KNOBS.get(name).choices(ref_config, info)) < 2:
                raise ConfigError(f"{KNOBS.get(name).title} has only one choice on {info.label}: nothing to search")
    tuning = Tuning(new_tuning_id(), time.time(), user, spec, "searching", None, [])
    with store.connect() as db:
        db.execute("INSERT INTO tunings (id, created_at, user, spec, state, note, confirm_ids) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (tuning.id, tuning.created_at, user, json.dumps(asdict(spec)), tuning.state, None, "[]"))
    advance(store, tuning.id, device_for=device_for)   # creates the study and queues the first trials
    return get(store, tuning.id)


def get(store, tuning_id: str) -> Tuning | None:
    found = _read(store, "WHERE id = ?", (tuning_id,))
    return found[0] if found else None


def tunings(store, *, active: bool = False) -> list[Tuning]:
    """Every tuning, newest first (only those under way with `active`); none on a store without the table."""
    return _read(store, "WHERE state IN ('searching', 'confirming')" if active else "", ())


def _read(store, where: str, args: tuple) -> list[Tuning]:
    import sqlite3
    try:
        with store.connect() as db:
            rows = db.execute(f"SELECT * FROM tunings {where} ORDER BY created_at DESC", args).fetchall()
    except sqlite3.OperationalError:   # a read-only store from before tunings existed
        return []
    return [Tuning(r["id"], r["created_at"], r["user"], Spec(**json.loads(r["spec"])), r["state"], r["note"],
                   json.loads(r["confirm_ids"] or "[]")) for r in rows]


def _set(store, tuning_id: str, **fields) -> None:
    fields = {k: json.dumps(v) if k == "confirm_ids" else v for k, v in fields.items()}
    with store.connect() as db:
        db.execute(f"UPDATE tunings SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", (*fields.values(), tuning_id))


def stop(store, tuning_id: str) -> str:
    """Ask for no more trials and cancel the queued ones; running ones finish and are told."""
    tuning = get(store, tuning_id)
    if tuning is None:
        raise ConfigError(f"there is no tuning {tuning_id!r}")
    if tuning.state not in ACTIVE:
        return f"tuning {tuning_id} is already {tuning.state}"
    _end(store, tuning_id, "stopped by a person: no more trials were asked for")
    return f"tuning {tuning_id} stopped"


def end_failed(store, tuning_id: str, why: str) -> None:
    """End a tuning that cannot go on (a bug, a broken study) with the reason."""
    _end(store, tuning_id, f"the tuning failed: {why}"[:1000])


def _end(store, tuning_id: str, note: str) -> None:
    """Stop a tuning: its queued trials cancelled, the reason kept."""
    from optlab.scheduler import cancel
    for run in store.list(sweep_id=tuning_id, status="queued"):
        cancel(store, run.id)
    _set(store, tuning_id, state="stopped", note=note)


def reference(run, spec: Spec) -> dict:
    """The reference run's figures the tuning is judged against: its speed (and within-run interval),
    its accuracy, and the accuracy floor the budget allows. For the inference objective, its
    unmodified model as measured in its compression phase (latency None when it had none)."""
    speed, accuracy, ci = None, None, None
    if run is not None:
        s = run.summary or {}
        if spec.objective == "inference":
            base = next((v for v in s.get("variants") or [] if v.get("name") == "baseline"), {})
            speed, ci = base.get("latency_ms_p50"), base.get("latency_ms_ci95")
            accuracy = base.get("test_accuracy", s.get("test_accuracy"))
        else:
            speed, accuracy, ci = OBJECTIVES.get(spec.objective).figures(run)
    floor = None if accuracy is None else accuracy - spec.budget_points / 100
    return {"run_id": spec.reference, "speed": speed, "speed_ci95": ci, "accuracy": accuracy, "floor": floor}


def _default_device(cfg: RunConfig):
    from optlab import device as devices
    return devices.probe(cfg.device)


def advance(store, tuning_id: str, *, device_for=None) -> None:
    """Tell finished trials, ask and queue new ones, then confirm; see the module's docstring."""
    tuning = get(store, tuning_id)
    if tuning is None or tuning.state not in ACTIVE:
        return
    if tuning.state == "searching" and \
            len(store.list(sweep_id=tuning_id, status=("queued", "running"))) >= tuning.spec.parallel:
        return   # every slot of the tuning is busy and nothing finished untold: no need to load Optuna
    from optuna.trial import TrialState
    device_for = device_for or _default_device
    spec, objective = tuning.spec, OBJECTIVES.get(tuning.spec.objective)
    ref = store.get(spec.reference)
    if ref is None:
        _set(store, tuning_id, state="stopped", note=f"the reference run #{spec.reference} was deleted")
        return
    study = _study(store, tuning)
    floor = reference(ref, spec)["floor"]

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        run = store.get(trial.user_attrs.get("run_id", -1))
        if run is None or run.finished:
            _tell(_storage(store), study, trial, run, objective, floor)
    if tuning.state == "searching":
        from optlab.fairuse import Refused, admit_many
        trials = [t for t in study.get_trials(deepcopy=False) if "duplicate_of" not in t.user_attrs]
        tried = {_key(t.params): t for t in trials if "run_id" in t.user_attrs}
        in_flight = sum(t.state == TrialState.RUNNING for t in trials)
        out_of_time = spec.minutes is not None and time.time() > tuning.created_at + 60 * spec.minutes
        base = RunConfig.from_dict(ref.config).replace(repeats=1, profile=False)
        if spec.objective == "training":
            base = base.replace(compress=[])
        info = device_for(base)
        repeated = 0
        while not out_of_time and len(trials) < spec.trials and in_flight < spec.parallel and repeated < MAX_REPEATED:
            try:
                admit_many(store, [base], tuning.user)     # the room's limits: wait for a later round
            except Refused:
                break
            trial = study.ask()
            cfg = base
            for name in spec.searched:
                k = KNOBS.get(name)
                cfg = k.apply(cfg, trial.suggest_categorical(name, k.choices(base, info)))
            if _key(trial.params) in tried:    # settings already run: told failed, not run again, not counted
                trial.set_user_attr("duplicate_of", tried[_key(trial.params)].number)
                study.tell(trial, state=TrialState.FAIL)
                repeated += 1
                continue
            trial.set_user_attr("config", cfg.to_dict())
            try:
                cfg.validate(device_for(cfg))
                admit_many(store, [cfg], tuning.user)
            except ConfigError as e:
                trial.set_user_attr("error", str(e))
                study.tell(trial, state=TrialState.FAIL)
            else:
                label = f"trial {len(trials) + 1} · " + describe(trial.params, info.kind)
                trial.set_user_attr("run_id", store.submit(cfg, user=tuning.user, sweep_id=tuning_id, label=label))
                tried[_key(trial.params)] = trial
                in_flight += 1
            trials.append(trial)
        exhausted = repeated >= MAX_REPEATED
        if in_flight == 0 and (out_of_time or exhausted or len(trials) >= spec.trials):
            _confirm(store, tuning, study, objective, floor)
    elif tuning.state == "confirming":
        runs = [store.get(i) for i in tuning.confirm_ids]
        if all(r is None or r.finished for r in runs):
            _set(store, tuning_id, state="done", note="the winner and the runner-up were run again: see the verdict")


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def describe(params: dict, device: str | None = None) -> str:
    """A trial's settings in the words run names use ('bf16 · channels-last · bs=256'); `device`
    ('cpu', 'cuda') names the input pipeline for where it ran."""
    return " · ".join(v if k == "compression" else knob_word(k, v, device) for k, v in params.items()) or "as the reference"


def _tell(storage, study, trial, run, objective: Objective, floor: float) -> None:
    """Tell the study how trial `trial` (a FrozenTrial) ended: its speed, with the accuracy it kept
    as its constraint (<= 0: within the budget), or failed with the reason."""
    from optuna.trial import Trial, TrialState
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                               trial.number)
    speed, accuracy, _ = objective.figures(run) if run is not None and run.status == "done" else (None, None, None)
    if speed is None or accuracy is None:
        why = ("its run was deleted" if run is None else
               f"its run #{run.id} {run.status}: {run.error or 'no reason recorded'}" if run.status != "done" else
               f"its run #{run.id} finished without the {objective.title}")
        storage.set_trial_user_attr(trial_id, "error", why[:500])
        study.tell(trial.number, state=TrialState.FAIL)
        return
    storage.set_trial_user_attr(trial_id, "accuracy", accuracy)
    Trial(study, trial_id).set_constraint("accuracy_shortfall", floor - accuracy)
    study.tell(trial.number, speed)


def _confirm(store, tuning: Tuning, study, objective: Objective, floor: float) -> None:
    """Queue the winner and the runner-up `confirm` times each (interleaved), or end the tuning."""
    ranked = ranking(trials_of(store, tuning), objective)
    if tuning.spec.confirm == 0 or len(ranked) < 2:
        why = ("no confirmation runs were asked for" if tuning.spec.confirm == 0 else
               "fewer than two trials kept within the budget: nothing to confirm a winner against")
        _set(store, tuning.id, state="done", note=why)
        return
    items = []
    for role, t in (("winner", ranked[0]), ("runner-up", ranked[1])):
        cfg = RunConfig.from_dict(t["config"]).replace(repeats=tuning.spec.confirm)
        items.append((cfg, f"confirm {role} · trial {t['index']}"))
    ids = repeats.queue(store, items, user=tuning.user, sweep_id=tuning.id)
    _set(store, tuning.id, state="confirming", confirm_ids=ids)


# -- reading a tuning back ------------------------------------------------------------------------------
def trials_of(store, tuning: Tuning) -> list[dict]:
    """Every trial with its settings, run, figures and whether it kept within the budget."""
    import optuna
    objective = OBJECTIVES.get(tuning.spec.objective)
    study = optuna.load_study(study_name=tuning.id, storage=_storage(store))
    floor = reference(store.get(tuning.spec.reference), tuning.spec)["floor"]
    out = []
    for t in [t for t in study.get_trials(deepcopy=False) if "duplicate_of" not in t.user_attrs]:
        run = store.get(t.user_attrs.get("run_id", -1)) if "run_id" in t.user_attrs else None
        speed, accuracy, ci = objective.figures(run) if run is not None and run.status == "done" else (None, None, None)
        out.append({"number": t.number, "index": len(out) + 1, "state": t.state.name.lower(), "params": dict(t.params),
                    "config": t.user_attrs.get("config"), "run_id": t.user_attrs.get("run_id"),
                    "run_status": run.status if run else None, "error": t.user_attrs.get("error"),
                    "speed": speed, "speed_ci95": ci, "accuracy": accuracy,
                    "within_budget": None if accuracy is None or floor is None else accuracy >= floor - 1e-12,
                    "device_label": (run.summary or {}).get("device_label") if run else None})
    return out


def ranking(trials: list[dict], objective: Objective) -> list[dict]:
    """The trials that kept within the budget, fastest first. A trial that lost more accuracy than
    the budget allows is never ranked, however fast it was."""
    kept = [t for t in trials if t["within_budget"] and t["speed"] is not None]
    return sorted(kept, key=lambda t: -t["speed"] if objective.higher_is_better else t["speed"])


def result(store, tuning_id: str) -> dict:
    """The tuning as the page and the CLI show it: the trials, the winner, the Pareto front of speed
    against accuracy, and how sure we are that the winner beats the runner-up."""
    from optlab.charts import pareto_front
    tuning = get(store, tuning_id)
    if tuning is None:
        raise ConfigError(f"there is no tuning {tuning_id!r}")
    objective = OBJECTIVES.get(tuning.spec.objective)
    ref = store.get(tuning.spec.reference)
    trials = trials_of(store, tuning)
    ranked = ranking(trials, objective)
    measured = [t for t in trials if t["speed"] is not None and t["accuracy"] is not None]
    sign = 1 if objective.higher_is_better else -1
    front = [measured[i]["number"] for i in pareto_front([(sign * t["speed"], t["accuracy"]) for t in measured])]
    return {"tuning": asdict(tuning), "objective": asdict(objective), "device": (ref.summary or {}).get("device") if ref else None,
            "reference": reference(ref, tuning.spec),
            "trials": trials, "winner": ranked[0] if ranked else None, "runner_up": ranked[1] if len(ranked) > 1 else None,
            "pareto": front, "confidence": confidence(store, tuning, objective, ranked)}


def confidence(store, tuning: Tuning, objective: Objective, ranked: list[dict]) -> dict:
    """Whether the winner really beats the runner-up: between the confirmation repeats when they ran,
    else between the two trials' within-run intervals (which leave run-to-run noise out, and say so)."""
    if len(ranked) < 2:
        return {"verdict": "no runner-up", "text": "fewer than two trials kept within the budget", "basis": None}
    winner, runner = ranked[0], ranked[1]
    runs = [store.get(i) for i in tuning.confirm_ids]
    runs = [r for r in runs if r is not None and r.status == "done"]
    if runs:
        sides = []
        for role in ("winner", "runner-up"):
            values = [objective.figures(r)[0] for r in runs if (r.label or "").startswith(f"confirm {role} ")]
            sides.append(summarize_repeats(values))
        out = compare(sides[0], sides[1], higher_is_better=objective.higher_is_better, against="the runner-up")
        out["basis"] = repeats.BETWEEN
        out["repeats"] = [s["n"] for s in sides]
    else:
        out = compare({"value": winner["speed"], "ci95": winner["speed_ci95"]},
                      {"value": runner["speed"], "ci95": runner["speed_ci95"]},
                      higher_is_better=objective.higher_is_better, against="the runner-up")
        out["basis"] = repeats.WITHIN if winner["speed_ci95"] and runner["speed_ci95"] else repeats.NONE
    return out


def speed_word(objective: Objective, value) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f} {objective.unit}" if objective.higher_is_better else f"{value:,.2f} {objective.unit}"
