"""Training a list of runs: which ones (:func:`train_runs`: a run finished with the same settings is
skipped, an interrupted one resumed), and several at once, one process each, sharing one machine's
CPU cores. (Above train.py, which writes the run folders of rloss.engine.runs: nothing below imports this.)

A small network on small images keeps two threads of one process busy only part of the time
(per-operation overhead, the single-threaded data pipeline), so on a CPU two runs with one
thread each train more iterations per second than one run with two (benchmarks/README.md,
"Two speed-ups for small runs on a CPU"). Each run is a spawned process (nothing shared with a
notebook kernel). A CPU run's thread count is fixed (:data:`THREADS_PER_RUN` unless its config
sets ``run.threads``), never derived from the cores or the number of runs at once: the thread
count decides the order of a reduction's partial sums, so a run's numbers are the same whether it
trains alone, beside another run or on a busy machine; its checkpoint, resume and metrics are those
of the run trained alone. On a GPU the runs would share one device, so
``auto`` trains one at a time. A run that starts from another's weights (the paper's two-phase
schedule: pCE + DenseCRF fine-tunes the finished pCE run) waits for that run to finish.

    finals = train_in_parallel([(cfg_a, False), (cfg_b, True)], processes=2)
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..data.io import DataError
from .config import TrainConfig
from .distributed import usable_cores
from .progress import PROGRESS_ENV, progress_bar, report_run
from .runs import CHECKPOINT, CONFIG, METRICS, check_run_folder, read_run_config, with_absolute_data_root

# Room left per run before ``auto`` adds another: a tiny run peaks near 0.4 GiB, a 513 px one far
# above; ``auto`` is for the small runs a CPU can train, larger ones are best given one at a time.
MEMORY_PER_RUN = 2 << 30
# The threads of a scheduled CPU run whose config leaves run.threads null: fixed, so that its
# arithmetic does not follow the machine's load or core count (see the module's docstring); one is
# also the faster way to fill a small CPU with small runs.
THREADS_PER_RUN = 1
# How long a run in flight gets to end after SIGTERM (a checkpoint being written) before SIGKILL.
STOP_GRACE_S = 30


def _on_gpu(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def with_fixed_threads(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` as the scheduler trains it: a CPU run without ``run.threads`` gets
    :data:`THREADS_PER_RUN`, written into its config (and so into config.yaml); a GPU run or one
    that names its threads is returned as it is."""
    if cfg.run.threads is not None or _on_gpu(cfg.run.device):
        return cfg
    fixed = copy.deepcopy(cfg)
    fixed.run.threads = THREADS_PER_RUN
    return fixed


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resolve_processes(setting: int | str, device: str, pending: int, threads_per_run: int = THREADS_PER_RUN) -> int:
    """How many runs to train at once: an int as given (at most ``pending``), or ``"auto"``: on a
    CPU as many as the usable cores hold runs of ``threads_per_run`` threads, as far as
    ``MEMORY_PER_RUN`` each fits in the available memory; on a GPU (``device`` cuda, or auto with
    one present) one."""
    if isinstance(setting, bool) or not (setting == "auto" or (isinstance(setting, int) and setting >= 1)):
        raise ValueError(f"parallel_runs must be a whole number >= 1 or 'auto', got {setting!r}")
    if pending <= 1:
        return 1
    if setting != "auto":
        return min(setting, pending)
    if _on_gpu(device):
        return 1
    memory = available_memory()
    by_memory = pending if memory is None else max(1, memory // MEMORY_PER_RUN)
    return max(1, min(pending, usable_cores() // threads_per_run, by_memory))


def _end_quietly(signum, frame):
    raise SystemExit(128 + signum)  # unwinds the run (lock released, partial file removed), no traceback


def _exit_if_swallowed(unraisable) -> None:
    """A SystemExit raised in a ``__del__`` (the signal came during one) is printed and ignored by
    Python: end the worker then, as it was asked to (the next start cleans what the run left)."""
    if isinstance(unraisable.exc_value, SystemExit):
        os._exit(unraisable.exc_value.code if isinstance(unraisable.exc_value.code, int) else 1)
    sys.__unraisablehook__(unraisable)


def _start_worker(threads: int) -> None:
    # Ctrl-C, the parent's SIGINT on SIGTERM/SIGHUP (rloss.engine.termination) or the pool's own SIGTERM when it
    # ends the runs in flight: the run stops as it would by an error, its checkpoint kept for a resume.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _end_quietly)
    sys.unraisablehook = _exit_if_swallowed
    torch.set_num_threads(threads)  # until train() sets the run's own (a GPU run's config may name none)
    # The parent reports progress (one bar over the runs); a child's bars would interleave with it.
    os.environ.pop(PROGRESS_ENV, None)
    os.environ["TQDM_DISABLE"] = "1"
    # tqdm's default lock holds a multiprocessing semaphore: a worker ended by an interrupt would leave
    # it to the resource tracker, which reports it as leaked at exit. A thread lock serves one process.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def _train_quietly(task: tuple[int, TrainConfig, bool]) -> tuple[int, dict, str]:
    """Runs in a worker: trains and returns the task's index, final scores and what the run printed."""
    from .train import train  # imported in the worker, after its threads are set

    index, cfg, resume = task
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        final = train(cfg, resume=resume, overwrite=True)  # train_runs decided: resume, or train it (again)
    return index, final, printed.getvalue()


def _run_in_worker(task: tuple[int, TrainConfig, bool], threads: int, conn: Connection) -> None:
    """A run's own process: trains the task and sends ``("done", (index, final, printed))`` or
    ``("failed", exception)`` to the parent. A process that ends without sending (killed, out of
    memory) is seen by the parent as its pipe's end."""
    _start_worker(threads)
    try:
        outcome = ("done", _train_quietly(task))
    except Exception as exc:  # the run's own error, raised again in the parent
        outcome = ("failed", exc)
    try:
        conn.send(outcome)
    except Exception:  # an exception that does not pickle: its type and message still reach the parent
        conn.send(("failed", RuntimeError(f"{type(outcome[1]).__name__}: {outcome[1]}")))
    conn.close()


def _next_outcome(running: dict[int, tuple[multiprocessing.process.BaseProcess, Connection]],
                  name: Callable[[int], str]) -> tuple[int, dict, str]:
    """The next finished run's ``(index, final, printed)``; its failure, or its process's end
    without a result, raised. Polled, so that Ctrl-C reaches the caller while it waits."""
    by_conn = {conn: i for i, (_, conn) in running.items()}
    while True:
        ready = wait(list(by_conn), timeout=0.5)
        if ready:
            break
    i = by_conn[ready[0]]
    process, conn = running.pop(i)
    try:
        kind, payload = conn.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"{name(i)}: its process ended without finishing (exit code {process.exitcode}; "
                           "killed, or out of memory?); its last checkpoint is kept for a resume") from None
    finally:
        conn.close()
    process.join()
    if kind == "failed":
        raise payload
    return payload


def _stop(running: dict[int, tuple[multiprocessing.process.BaseProcess, Connection]]) -> None:
    """Ends the runs in flight: SIGTERM first, so each stops as it would by an error (lock released,
    checkpoint kept for a resume), then SIGKILL for one still there after :data:`STOP_GRACE_S`."""
    for process, _ in running.values():
        process.terminate()
    for process, conn in running.values():
        process.join(STOP_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()
    running.clear()


def train_in_parallel(tasks: list[tuple[TrainConfig, bool]], processes: int,
                      on_start: Callable[[int], None] | None = None,
                      on_done: Callable[[int, dict, str], None] | None = None,
                      after: Sequence[int | None] | None = None) -> list[dict]:
    """Trains each ``(config, resume)`` in ``tasks``, ``processes`` runs at once, each in a fresh
    spawned process, and returns their final scores in the order given. Runs start in that order,
    except that task i waits until task ``after[i]`` (when not None) has finished: it starts from that
    run's weights. ``on_start(i)`` is called as run i gets a process, ``on_done(i, final, printed)`` as
    it finishes. The first failure, or a process that ends without a result, ends the runs in flight
    (their checkpoints let a later call resume them) and is raised here."""
    after = list(after) if after is not None else [None] * len(tasks)
    threads = max(1, usable_cores() // processes)
    context = multiprocessing.get_context("spawn")
    finals: list[dict | None] = [None] * len(tasks)
    waiting, finished = list(range(len(tasks))), set()
    running: dict[int, tuple[multiprocessing.process.BaseProcess, Connection]] = {}
    try:
        while waiting or running:
            ready = [i for i in waiting if after[i] is None or after[i] in finished]
            for i in ready[:processes - len(running)]:
                waiting.remove(i)
                if on_start:
                    on_start(i)
                cfg, resume = tasks[i]
                receiver, sender = context.Pipe(duplex=False)
                # Not a daemon: a run may start its own data loader workers. It never outlives this
                # call (the finally below ends it).
                process = context.Process(target=_run_in_worker, args=((i, cfg, resume), threads, sender),
                                          name=f"rloss-run-{cfg.run.name}")
                process.start()
                sender.close()  # the child holds the only sending end: its exit is seen as the pipe's end
                running[i] = (process, receiver)
            if not running:
                raise ValueError(f"{tasks[waiting[0]][0].run.name}: waits for a run that never starts "
                                 "(loss.init_from points at its own checkpoint?)")
            i, final, printed = _next_outcome(running, lambda j: tasks[j][0].run.name)
            finished.add(i)
            finals[i] = final
            if on_done:
                on_done(i, final, printed)
    finally:
        _stop(running)  # a failed run or a KeyboardInterrupt ends the runs in flight now
    return finals  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Finished runs, and training those that are not
# --------------------------------------------------------------------------------------------


def finished_metrics(cfg: TrainConfig) -> dict | None:
    """The final metrics of a finished run with exactly this config; None otherwise (also for a
    folder whose files come from different runs: it is reported and trained again)."""
    try:
        metrics = json.loads((cfg.run_dir / METRICS).read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("final") is None or not _same_config(cfg):
        return None
    try:
        check_run_folder(cfg.run_dir)
    except DataError as exc:
        print(f"{exc}; training it again", file=sys.stderr)
        return None
    return metrics["final"]


def train_runs(configs: list[TrainConfig], rerun: bool = False, parallel_runs: int | str = 1) -> list[dict]:
    """Trains each config and returns their final metrics. A run already finished with the same
    config is skipped unless ``rerun``; an interrupted one (a checkpoint and the same config, no
    final metrics) is resumed. ``parallel_runs``: how many train at once, each in its own process
    (``"auto"``: one per CPU core as memory allows, one on a GPU; see ``rloss.engine.run_pool``). A CPU run
    trains with a fixed thread count (``run_pool.with_fixed_threads``), so its numbers do not depend
    on ``parallel_runs`` or on the machine's load. The configs come checked from where they were made
    (``load_config``, the study's grid, the sweep): they are not validated again here."""
    from .train import train  # imported when runs train: the library and the run folder need none of this

    configs = [with_fixed_threads(cfg) for cfg in configs]
    finals: list[dict | None] = [None] * len(configs)
    pending = []  # (index, resume)
    for i, cfg in enumerate(configs):
        done = None if rerun else finished_metrics(cfg)
        if done is not None:
            print(f"[{i + 1}/{len(configs)}] {cfg.run.name}: finished before (mIoU {done['miou']:.4f}), skipped",
                  file=sys.stderr)
            report_run(i + 1, len(configs), cfg.run.name, skipped=True)
            finals[i] = done
        else:
            resumable = not rerun and (cfg.run_dir / CHECKPOINT).is_file() and _same_config(cfg) and _one_run(cfg)
            pending.append((i, resumable))
    threads = max((configs[i].run.threads or 1 for i, _ in pending), default=1)
    processes = resolve_processes(parallel_runs, configs[0].run.device if configs else "cpu", len(pending), threads)

    def announce(j: int) -> None:
        i = pending[j][0]
        print(f"[{i + 1}/{len(configs)}] {configs[i].run.name}", file=sys.stderr)
        report_run(i + 1, len(configs), configs[i].run.name)  # to the study runner's terminal, when there is one

    if processes == 1:
        for j, (i, resumable) in enumerate(pending):
            announce(j)
            finals[i] = train(configs[i], resume=resumable, overwrite=True)  # decided above: resume or (re)train
        return finals  # type: ignore[return-value]

    print(f"training {len(pending)} runs, {processes} at once (one process each)", file=sys.stderr)
    bar = progress_bar(total=len(pending), desc=f"runs finished ({processes} at once)", unit="run")
    training: list[str] = []  # the runs in flight, named after the bar (a sweep's names carry their weights)

    def started(j: int) -> None:
        announce(j)
        training.append(configs[pending[j][0]].run.name)
        bar.set_postfix_str("training " + ", ".join(training))

    def finished(j: int, final: dict, printed: str) -> None:
        i = pending[j][0]
        sys.stderr.write(printed)
        bar.write(f"{configs[i].run.name}: done, mIoU {final['miou']:.4f}", file=sys.stderr)
        training.remove(configs[i].run.name)
        bar.set_postfix_str("training " + ", ".join(training) if training else "", refresh=False)
        bar.update(1)

    try:
        tasks = [(configs[i], resumable) for i, resumable in pending]
        done = train_in_parallel(tasks, processes, on_start=started, on_done=finished,
                                 after=_starts_from([cfg for cfg, _ in tasks]))
    finally:
        bar.close()
    for (i, _), final in zip(pending, done):
        finals[i] = final
    return finals  # type: ignore[return-value]


def _starts_from(configs: list[TrainConfig]) -> list[int | None]:
    """For each config, the index of the config whose checkpoint its ``loss.init_from`` names (a
    two-phase run's pCE run, which must finish first), or None."""
    checkpoints = {(cfg.run_dir / CHECKPOINT).resolve(): i for i, cfg in enumerate(configs)}
    return [checkpoints.get(Path(cfg.loss.init_from).resolve()) if cfg.loss.init_from else None for cfg in configs]


def _one_run(cfg: TrainConfig) -> bool:
    """Whether the run folder's config.yaml and checkpoint.pt were written by the same run."""
    try:
        check_run_folder(cfg.run_dir, (CONFIG, CHECKPOINT))
        return True
    except DataError:
        return False


def _same_config(cfg: TrainConfig) -> bool:
    """Whether the run folder's config.yaml holds ``cfg`` in every setting the run uses
    (``TrainConfig.settings_used``: a pCE run is the same whatever DenseCRF weight its config names);
    a missing or bad one does not."""
    try:
        return read_run_config(cfg.run_dir).settings_used() == with_absolute_data_root(cfg).settings_used()
    except (OSError, ValueError):
        return False
