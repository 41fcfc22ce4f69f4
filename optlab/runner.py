"""Executes one stored run: the recipe that calls each phase in order and records what it measured.

    set-up (device, data, model, batch size) -> train (timed, profiled window) -> evaluate
    -> compress (variants) -> summary

The CLI calls it in-process; the background worker calls it in its own process.
"""
from __future__ import annotations

import errno
import gc
import json
import os
import statistics
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from optlab import device as devices
from optlab.batchsize import CPU_MEMORY_SHARE, BatchSearch, batch_cap, search_batch_size, search_by_throughput
from optlab.compress.checkpoint import save_weights
from optlab.config import ConfigError, RunConfig
from optlab.data import DataError, load_dataset
from optlab.ddp import SINGLE, DistributedFailure, Ranks
from optlab.hostload import HostWatch, ThreadPlan, apply_plan, plan_for
from optlab.measure import percentile
from optlab.memory import PhasePeak, memory_limit_mb, release_freed_memory
from optlab.models import MODELS, build_model, count_parameters
from optlab.pipeline import make_pipeline, memory_format, normalisation, to_model_input
from optlab.stats import throughput_figures
from optlab.store import Store, StoreError
from optlab.train import RunCancelled, evaluate, optimizer_step, setup_optimizer, setup_precision, train

USER_ERRORS = (ConfigError, DataError, DistributedFailure)


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, (RuntimeError, MemoryError)) and ("out of memory" in str(e) or "can't allocate memory" in str(e)))


def execute(store: Store, run_id: int, *, on_progress: Callable[[dict], None] | None = None,
            should_stop: Callable[[], bool] | None = None, threads: ThreadPlan | None = None) -> dict | None:
    """Run `run_id` to the end and leave it done, failed or cancelled, with the reason.
    Returns the summary of a finished run, None otherwise.

    The run's folder and its first file are written before any work, so a full or read-only
    disk fails the run at once with that reason. An exception while a stop was asked for
    (`should_stop()`) ends the run cancelled, not failed: it is the cancel unwinding. `threads` is the worker's CPU plan;
    without one (the CLI's in-process run) it is made here from the cores this process may use."""
    run = store.get(run_id)
    cfg = run.run_config
    batch_size = cfg.batch_size
    try:
        device = devices.resolve(cfg.device)
        info = devices.describe(device)
        cfg.validate(info)
        store.update(run_id, status="running", device=info.to_dict(),
                     started_at=run.started_at or time.time())
        prepare_run_folder(store, run_id, cfg)
        cfg, threads = use_cpu_plan(store, run_id, cfg, threads)
        if cfg.gpus > 1:   # torchrun starts the ranks (optlab.rank); this process follows them
            from optlab.ddp import launch
            summary = launch(store, run_id, cfg, device.type, on_progress, should_stop, threads)
        else:
            summary = _execute(store, run_id, cfg, device, info, on_progress, should_stop, threads)
        store.finish(run_id, "done", summary=summary)
        return summary
    except RunCancelled:   # (a run another process ended meanwhile keeps its reason: Ray's lost task, say)
        store.finish_if_running(run_id, "cancelled", error="cancelled on request")
    except USER_ERRORS as e:
        store.finish(run_id, "failed", error=str(e))
    except StoreError:
        raise   # the store itself cannot be written: nothing here can record it
    except BaseException as e:
        disk = disk_problem(e)
        if is_out_of_memory(e):
            bs = store.get(run_id).summary or {}
            size = bs.get("batch_size", batch_size)
            suggestion = (f"try batch size {max(1, int(size) // 2)} or 'auto'" if isinstance(size, int)
                          else "try a smaller image size or model")
            store.finish(run_id, "failed", error=f"out of memory at batch size {size}: {suggestion}")
        elif isinstance(e, KeyboardInterrupt):
            if type(e) is KeyboardInterrupt:   # Ctrl-C; a subclass (the worker's Stopped) is settled by its raiser
                store.finish_if_running(run_id, "cancelled", error="interrupted from the keyboard")
        elif should_stop is not None and should_stop():
            store.finish_if_running(run_id, "cancelled", error="cancelled on request")
        elif disk:
            store.finish(run_id, "failed", error=disk)
        else:
            # The short write first: if the disk is full, the reason is what must get through.
            store.finish(run_id, "failed", error=f"{type(e).__name__}: {e}")
            try:
                store.add_event(run_id, traceback.format_exc(), level="error")
            except StoreError:
                pass
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return None


def use_cpu_plan(store, run_id: int, cfg: RunConfig, plan: ThreadPlan | None) -> tuple[RunConfig, ThreadPlan]:
    """Apply the CPU plan (intra-op threads; loader workers through the config the pipeline reads)
    and say on the run when it gave the loader fewer workers than asked for."""
    plan = apply_plan(plan or plan_for(cfg))
    if plan.note:
        store.add_event(run_id, plan.note)
    if cfg.pipeline == "cpu" and cfg.num_workers != plan.loader_workers:
        cfg = cfg.replace(num_workers=plan.loader_workers)
    return cfg, plan


DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exhausted",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EFBIG: "the file is larger than allowed"}


def disk_problem(e: BaseException) -> str | None:
    """'no space left on the device writing /path/model.pt', for a file-system error anywhere in
    the exception's chain (torch wraps some in RuntimeError); None for other errors."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRORS:
            where = f" writing {e.filename}" if e.filename else ""
            return f"{DISK_ERRORS[e.errno]}{where} ({os.strerror(e.errno)}); free space or fix the folder, then run it again"
        e = e.__cause__ or e.__context__
    return None


def prepare_run_folder(store: Store, run_id: int, cfg: RunConfig) -> Path:
    """The run's folder with `run.json` (its id and config) in it, written before any work."""
    folder = store.artifacts_dir(run_id)
    path = folder / "run.json"
    tmp = folder / ".run.json.partial"
    try:
        tmp.write_text(json.dumps({"id": run_id, "config": cfg.to_dict()}, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        e.filename = e.filename or str(path)
        raise
    return folder


def _execute(store, run_id, cfg: RunConfig, device, info, on_progress, should_stop, threads=None,
             ranks: Ranks = SINGLE) -> dict | None:
    """The run's work. In a data-parallel run every rank calls it (optlab.rank) with its `ranks`:
    each trains on its share of the images, and only rank 0 writes to the store and returns the
    summary (the others return None)."""
    progress = on_progress or (lambda state: None)
    torch.manual_seed(cfg.seed)   # the same seed on every rank: the same initial weights
    progress({"phase": "load data"})
    ds = load_dataset(cfg)
    if ranks.distributed:
        ds = ds.shard(ranks.rank, ranks.world)
    size = cfg.image_size or ds.native_size
    spec = MODELS.get(cfg.model)
    model = build_model(cfg.model, ds.channels, ds.num_classes, size)
    model = model.to(device, memory_format=memory_format(cfg.channels_last))
    precision = setup_precision(cfg.precision, device)
    opt_name = cfg.optimizer or spec.optimizer
    lr = cfg.lr or spec.lr
    wd = spec.weight_decay if cfg.weight_decay is None else cfg.weight_decay

    search: BatchSearch | None = None
    if cfg.batch_size == "auto":
        progress({"phase": "batch size search"})
        search = find_batch_size(model, ds, cfg, device, precision, opt_name, lr, wd, size)
        batch_size = search.chosen
        store.add_event(run_id, describe_search(search))
    else:
        batch_size = cfg.batch_size
    if ranks.lead:
        store.update(run_id, summary={"batch_size": batch_size})
    if batch_size > len(ds.train_y):
        share = f" of rank {ranks.rank}'s share (1/{ranks.world})" if ranks.distributed else ""
        raise ConfigError(f"batch size {batch_size} is larger than the {len(ds.train_y)} training images{share}; "
                          "lower it or raise the train limit")

    train_batches = make_pipeline(ds, cfg, device, batch_size, train=True)
    test_batches = make_pipeline(ds, cfg, device, min(1024, 2 * batch_size), train=False)
    total_steps = cfg.epochs * len(train_batches)
    # the learning rate follows the batch of one optimizer step: every rank's images together
    optimizer, scheduler = setup_optimizer(model, opt_name, lr, wd, batch_size * ranks.world, total_steps,
                                           cfg.warmup_fraction)
    warmup_steps = 5 if total_steps >= 20 else max(1, total_steps // 4)
    trained = model
    if ranks.distributed:   # gradients averaged across ranks in buckets, overlapped with backward
        from torch.nn.parallel import DistributedDataParallel
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          gradient_as_bucket_view=True)
    trained = torch.compile(trained) if cfg.compile else trained

    window = None
    first = profile_window_start(warmup_steps, len(train_batches), cfg.epochs) if cfg.profile and ranks.lead else None
    if first is not None:
        from optlab.profiling import ProfileWindow
        window = ProfileWindow(store.artifacts_dir(run_id) / "tb" / f"run{run_id}", device, first_step=first)
    elif cfg.profile and ranks.lead:
        store.add_event(run_id, f"no profile: {len(train_batches)} steps an epoch are too few for warm-up "
                                f"plus a {PROFILE_WINDOW_STEPS}-step window inside one epoch")

    peak, host = PhasePeak(device, tree=True).start(), HostWatch(threads).start()
    result = train(trained, train_batches, test_batches, epochs=cfg.epochs, label_smoothing=cfg.label_smoothing,
                   optimizer=optimizer, scheduler=scheduler, precision=precision, device=device,
                   warmup_steps=warmup_steps, profiler=window, on_progress=progress, should_stop=should_stop,
                   sync_debug=os.environ.get("OPTLAB_SYNC_DEBUG") or None)
    memory, host = peak.figures(), host.finish()
    per_rank = None
    if ranks.distributed:
        from optlab.ddp import gather_rank_figures
        per_rank = gather_rank_figures(ranks, result, memory)   # every rank takes part; rank 0 gets the list
        if not ranks.lead:
            return None
    if host["disturbed"]:
        store.add_event(run_id, f"measurement disturbed: {host['reason']}", level="warning")
    # images counted over every rank (rank 0's steps: the ranks move in step)
    epochs = [dict(vars(e), images_per_s=e.images_per_s and e.images_per_s * ranks.world) for e in result.epochs]
    store.add_metrics(run_id, "epoch", epochs, [e.epoch for e in result.epochs])
    s = result.steady
    store.add_metric(run_id, "step_times", {"step_ms": s.step_ms, "images": [n * ranks.world for n in s.step_images],
                                            "input_wait_ms": s.input_wait_ms})

    params, nonzero = count_parameters(model)
    weights = store.artifacts_dir(run_id) / "model.pt"
    save_weights(model, weights)
    summary = summarize(cfg, result, memory, info, batch_size, search, ds, ranks)
    if per_rank is not None:
        from optlab.ddp import distributed_figures
        summary.update(distributed_figures(info.label, cfg, per_rank, ranks))
    summary.update(host=host, params=params, nonzero_params=nonzero, weights_mb=weights.stat().st_size / 2**20,
                   weights_path=str(weights), optimizer=opt_name, lr=lr, weight_decay=wd,
                   trace_dir=str(window.trace_dir) if window and window.trace_files else None)
    if window is not None and window.profiler_result is not None:
        _attach_profile(store, run_id, window, summary, device, model, ds, cfg, precision)
        if ranks.distributed:
            from optlab.ddp import allreduce_share
            profile = summary.get("profile") or {}
            summary["distributed"].update(allreduce_share=allreduce_share(profile), allreduce_basis=(
                "GPU kernel time" if profile.get("category_basis") == "gpu" else "CPU operator time (self)"))
    if cfg.compress:
        from optlab.compress import run_steps
        progress({"phase": "compress"})
        summary["variants"] = run_steps(store, run_id, model, ds, cfg, device, summary)
    return summary


PROFILE_WINDOW_STEPS = 6   # ProfileWindow's 2 warm-up + 3 active steps, and the step that writes the trace


def profile_window_start(warmup_steps: int, steps_per_epoch: int, epochs: int,
                         length: int = PROFILE_WINDOW_STEPS) -> int | None:
    """The first step of a profiled window that starts after warm-up and stays inside one epoch
    (a window across an epoch's end would record the evaluation pass); None when none fits."""
    for epoch in range(epochs):
        first = max(warmup_steps, epoch * steps_per_epoch)
        if first + length <= (epoch + 1) * steps_per_epoch:
            return first
    return None


def _attach_profile(store, run_id, window, summary, device, model, ds, cfg, precision) -> None:
    """The in-app profile summaries: the training window's, and a short inference window's (its
    trace lands beside the training trace as worker "inference"). The run's own figures are
    already measured, so a failure here is logged as an event and never fails the run."""
    from optlab import profiling
    try:
        summary["profile"] = profiling.summarize_profile(window.profiler_result, device)
    except Exception:
        store.add_event(run_id, "profile summary failed:\n" + traceback.format_exc(), level="error")
    try:
        summary["profile_inference"] = profiling.profile_run_inference(
            model, ds, cfg, summary["batch_size"], device, window.trace_dir, precision.autocast)
    except Exception:
        store.add_event(run_id, "inference profile failed:\n" + traceback.format_exc(), level="error")


def summarize(cfg: RunConfig, result, memory: dict, info, batch_size: int, search, ds,
              ranks: Ranks = SINGLE) -> dict:
    """The run's figures. In a data-parallel run they are rank 0's steps, each counted with the
    images of every rank (the ranks wait for each other in every step's gradient all-reduce, so
    rank 0's step time is the step's time for all of them)."""
    s = result.steady
    steady_ms = sum(s.step_ms)
    throughput = throughput_figures(s.step_ms, [n * ranks.world for n in s.step_images])
    accuracies = [e.test_accuracy for e in result.epochs]
    reached = next((e.cumulative_train_seconds for e in result.epochs if e.test_accuracy >= cfg.target_accuracy), None)
    applies = ds.accuracy_applies
    on_cpu = memory["device_peak_allocated_mb"] is None
    return {
        "device": info.kind,
        "device_name": info.name,
        "device_label": info.label,
        "batch_size": batch_size,
        "batch_size_search": search.to_dict() if search else None,
        "image_size": cfg.image_size or ds.native_size,
        "train_images": len(ds.train_y) * ranks.world,
        "test_images": len(ds.test_y),
        "data_source": ds.source,
        "epochs": cfg.epochs,
        "steps": result.total_steps,
        "warmup_steps": result.warmup_steps,
        "warmup_seconds": result.warmup_seconds,
        "profiled_steps_excluded": result.excluded_profiled_steps,
        "steady_steps": len(s.step_ms),
        "train_images_per_s": throughput["value"],     # median of the steady steps' throughput
        "throughput": throughput,                      # its spread, interval and quality
        "train_images_per_s_mean": throughput["mean_rate"],
        "step_ms_p50": percentile(s.step_ms, 50),
        "step_ms_p90": percentile(s.step_ms, 90),
        "input_wait_share": sum(s.input_wait_ms) / steady_ms if steady_ms else None,
        "input_wait_ms_p50": percentile(s.input_wait_ms, 50),
        "forward_backward_ms_p50": percentile(s.forward_backward_ms, 50),
        "optimizer_ms_p50": percentile(s.optimizer_ms, 50),
        "memory": memory,                              # every figure with its label (optlab.memory)
        # the headline figure under the keys older readers use: the GPU allocator's, else the process's
        "peak_memory_mb": memory["process_peak_mb"] if on_cpu else memory["device_peak_allocated_mb"],
        "peak_reserved_mb": memory["device_peak_reserved_mb"],
        "memory_kind": "host_rss" if on_cpu else "cuda_allocator",
        "accuracy_applies": applies,
        "test_accuracy": accuracies[-1] if applies and accuracies else None,
        "best_test_accuracy": max(accuracies) if applies and accuracies else None,
        "accuracy_per_epoch": accuracies if applies else None,
        "train_seconds": result.train_seconds,
        "target_accuracy": cfg.target_accuracy,
        "time_to_target_s": reached if applies else None,
        "versions": devices.software_versions(),
        "torch_threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }


TRIAL_STEPS = (3, 10, 0.5)   # timed steps per batch-size trial: at least 3, at most 10, or until 0.5 s


def find_batch_size(model, ds, cfg, device, precision, opt_name, lr, wd, size) -> BatchSearch:
    """Search with real training steps on real images, then confirm with a step and an eval pass.

    Each trial measures its own peak memory (the high-water mark is reset before it) and its
    training-step speed on one batch (the input pipeline left out); optlab.batchsize chooses."""
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    criterion = torch.nn.CrossEntropyLoss()
    on_gpu = device.type == "cuda"
    cap, cap_reasons = batch_cap(len(ds.train_y), cfg.epochs, cfg.max_batch_size, on_gpu)
    limit_mb, limit_source = (None, "") if on_gpu else memory_limit_mb()
    g = torch.Generator().manual_seed(cfg.seed)

    mean, std = normalisation(ds.mean, ds.std, device)

    def batch(n):
        idx = torch.randint(0, len(ds.train_y), (n,), generator=g)
        x = to_model_input(ds.train_x[idx].to(device), mean, std, size, cfg.channels_last)
        return x, ds.train_y[idx].to(device)

    def step(opt, x, y):
        optimizer_step(model, criterion, opt, precision, x, y)

    def trial(n, with_eval=False) -> dict | None:
        opt, _ = setup_optimizer(model, opt_name, lr, wd, n, 10, 0.1)
        try:
            peak = PhasePeak(device).start()
            model.train()
            x, y = batch(n)
            step(opt, x, y)                  # warm-up: lazy initialisation, autotuning
            times = []
            least, most, seconds = TRIAL_STEPS
            while len(times) < least or (len(times) < most and sum(times) < seconds):
                if on_gpu:
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                step(opt, x, y)
                if on_gpu:
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
            if with_eval:
                evaluate(model, [batch(min(1024, 2 * n))], precision.autocast)
            figures = peak.figures()
            mb = figures["device_peak_allocated_mb"] if on_gpu else figures["process_peak_mb"]
            if limit_mb is not None and mb > CPU_MEMORY_SHARE * limit_mb:
                return None   # keep the host usable: more than this share of its memory does not "fit"
            return {"peak_memory_mb": mb, "images_per_s": n / statistics.median(times)}
        except BaseException as e:
            if not is_out_of_memory(e):
                raise
            return None
        finally:
            del opt
            model.zero_grad(set_to_none=True)
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()

    if on_gpu:
        search = search_batch_size(trial, start=min(16, cap), cap=cap)
    else:
        search = search_by_throughput(trial, start=16, cap=cap)
    search.cap_reasons = cap_reasons
    if limit_mb is not None:
        search.cap_reasons.append(f"a trial fits below {CPU_MEMORY_SHARE:.0%} of {limit_mb:,.0f} MB ({limit_source})")
    for _ in range(4):  # confirm: a full step plus an evaluation pass at the chosen size
        if trial(search.chosen, with_eval=True) is not None:
            search.confirmed = True
            break
        search.chosen = max(1, int(search.chosen * search.headroom) // 8 * 8 or 1)
    model.load_state_dict(initial)
    release_freed_memory()
    return search


def describe_search(search: BatchSearch) -> str:
    """The run's event for an automatic batch size: the choice, why, and every trial."""
    rows = "; ".join(
        f"{t['batch_size']}: " + (("fits" if t["fits"] else "does not fit")
                                  + (f", {t['peak_memory_mb']:,.0f} MB" if t.get("peak_memory_mb") is not None else "")
                                  + (f", {t['images_per_s']:,.0f} img/s" if t.get("images_per_s") else ""))
        for t in search.trials)
    return (f"automatic batch size: {search.chosen} by {search.rule}: {search.reason}. "
            f"Cap {search.cap} ({'; '.join(search.cap_reasons)}). Trials: {rows}")
