"""Single points under a wall-clock limit, one child process per frame, and the batch API.

PySCF has no time limit of its own, and a CUDA context or a fragmented GPU memory pool is
only reliably released when its process ends. Each frame therefore runs in a fresh
``spawn`` child; the parent waits on a pipe, receives each SCF attempt as it finishes,
and kills the child when the frame's time is up. The clock starts when the child reports
that it has imported its libraries, so ``time_limit`` measures the DFT work itself; the
start-up gets its own, generous allowance (:data:`STARTUP_TIMEOUT`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

from ase import Atoms

from dft.results import DFTFailure, DFTResult
from dft.settings import DFTSettings
from dft.validate import FramePlan, plan_frame
from pipeline.errors import ConfigError, SelfplayError

log = logging.getLogger(__name__)

#: Seconds a child may take to start and import PySCF (and GPU4PySCF) before the frame
#: counts as failed; not part of the frame's time limit.
STARTUP_TIMEOUT = 300.0

Outcome = DFTResult | DFTFailure


def _clean_frame(atoms: Atoms) -> Atoms:
    """A copy with only what the SCF needs (no calculator, no arrays that may not pickle)."""
    info = {k: atoms.info[k] for k in ("charge", "spin") if k in atoms.info}
    return Atoms(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(), cell=atoms.cell.array.copy(), pbc=atoms.pbc.copy(), info=info)


def _child_main(conn: Connection, atoms: Atoms, settings: DFTSettings, plan: FramePlan, name: str) -> None:
    """Body of a worker process: label one frame, report through ``conn``."""
    try:
        from dft import compute

        _preload_libraries(plan, settings)
        conn.send(("ready", None))
        outcome = compute.compute_frame(
            atoms, settings, plan=plan, on_attempt=lambda record: conn.send(("attempt", record)), name=name
        )
        conn.send(("result", outcome))
    except BaseException as exc:  # noqa: BLE001 - anything here must reach the parent as a failure
        from dft.compute import _describe, classify_exception

        try:
            conn.send(("crash", (classify_exception(exc), _describe(exc))))
        except Exception:
            pass
    finally:
        conn.close()


def _preload_libraries(plan: FramePlan, settings: DFTSettings) -> None:
    """Import what the frame will need, so that start-up is not charged to its time limit."""
    import importlib

    modules = ["pyscf.dft", "pyscf.grad.rks", "pyscf.grad.uks"]
    if plan.periodic:
        modules += ["pyscf.pbc.dft", "pyscf.pbc.grad.krks", "pyscf.pbc.grad.kuks"]
    else:
        modules += ["pyscf.df", "pyscf.df.grad.rks", "pyscf.df.grad.uks"]
    for module in modules:
        importlib.import_module(module)
    if settings.device != "cpu":
        from dft.backend import gpu_packages_installed, import_gpu4pyscf

        if gpu_packages_installed():
            try:
                import_gpu4pyscf()
            except Exception:  # compute_frame reports the reason (or falls back to the CPU)
                pass


PARENT_PID_VARIABLE = "SELFPLAY_DFT_PARENT_PID"


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when the process that started it dies.

    A flow killed mid-batch (crash, cancellation, node failure of the driver) must not
    leave single points running for hours with nobody to store their results.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not glibc: the time limit still bounds the orphan
        return
    if os.environ.get(PARENT_PID_VARIABLE) not in (None, str(os.getppid())):
        os._exit(1)  # the parent died before prctl took effect: we were re-parented


def worker_entry() -> None:
    """``python -m dft._worker FD``: read the job from stdin, report on file descriptor FD.

    A plain subprocess rather than ``multiprocessing``: a spawned multiprocessing child
    re-runs the caller's ``__main__``, which breaks scripts without a main guard.
    """
    _die_with_parent()
    conn = Connection(int(sys.argv[1]), readable=False)
    atoms, settings, plan, name = pickle.load(sys.stdin.buffer)
    _child_main(conn, atoms, settings, plan, name)


@dataclass
class _Job:
    index: int
    name: str
    process: Any
    conn: Connection
    launched: float
    ready_at: Optional[float] = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    outcome: Optional[Outcome] = None
    crash: Optional[tuple[str, str]] = None

    def deadline(self, time_limit: Optional[float]) -> float:
        if self.ready_at is None:
            return self.launched + STARTUP_TIMEOUT
        if time_limit is None:
            return float("inf")
        return self.ready_at + time_limit


def _child_environment(threads: Optional[int], cuda_device: Optional[str], want_gpu: bool) -> dict[str, str]:
    """The environment of a worker: this one, plus thread counts, GPU choice, paths."""
    from dft.backend import library_path_with_nvidia

    env = dict(os.environ)
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    if cuda_device is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_device
    if want_gpu:
        path = library_path_with_nvidia(env.get("LD_LIBRARY_PATH"))
        if path:
            env["LD_LIBRARY_PATH"] = path
    env[PARENT_PID_VARIABLE] = str(os.getpid())
    # The worker imports this package the way this process did, installed or not.
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _failure(settings: DFTSettings, kind: str, reason: str, attempts: list, **info: Any) -> DFTFailure:
    return DFTFailure(
        reason=reason,
        kind=kind,
        theory_key=settings.theory_key(),
        attempts=list(attempts),
        info={"theory_key": settings.theory_key(), "theory": settings.theory_spec(), **info},
    )


class _Pool:
    """Up to ``workers`` child processes, each labelling one frame."""

    def __init__(self, settings: DFTSettings, workers: int):
        self.settings = settings
        self.workers = workers
        self.jobs: list[_Job] = []
        from dft.backend import cuda_device_count, gpu_packages_installed

        self.want_gpu = settings.device != "cpu" and gpu_packages_installed()
        self.n_gpus = cuda_device_count() if self.want_gpu else 0
        if settings.threads is not None:
            self.threads: Optional[int] = settings.threads
        elif os.environ.get("OMP_NUM_THREADS") or workers == 1:
            self.threads = None  # the user's (or the library's default) setting stands
        else:
            self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._slot = 0

    def launch(self, index: int, name: str, atoms: Atoms, plan: FramePlan) -> None:
        read_fd, write_fd = os.pipe()
        cuda_device = None
        if self.n_gpus > 1:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = visible.split(",") if visible else [str(i) for i in range(self.n_gpus)]
            cuda_device = ids[self._slot % len(ids)]
            self._slot += 1
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "dft._worker", str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                pass_fds=(write_fd,),
                env=_child_environment(self.threads, cuda_device, self.want_gpu),
            )
        finally:
            os.close(write_fd)
        conn = Connection(read_fd, writable=False)
        try:
            process.stdin.write(pickle.dumps((_clean_frame(atoms), self.settings, plan, name)))
            process.stdin.close()
        except OSError:  # the child died at once; poll() reports it
            pass
        self.jobs.append(_Job(index=index, name=name, process=process, conn=conn, launched=time.monotonic()))

    def _finish(self, job: _Job, outcome: Outcome) -> tuple[int, Outcome]:
        self.jobs.remove(job)
        with contextlib.suppress(Exception):
            job.conn.close()
        try:
            job.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill(job)
        return job.index, outcome

    def _kill(self, job: _Job) -> None:
        if job.process.poll() is None:
            job.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            job.process.wait(timeout=10)

    def poll(self, timeout: float) -> list[tuple[int, Outcome]]:
        """Wait up to ``timeout`` s for messages; return the frames that finished."""
        finished: list[tuple[int, Outcome]] = []
        if not self.jobs:
            return finished
        now = time.monotonic()
        nearest = min(job.deadline(self.settings.time_limit) for job in self.jobs)
        wait_for = max(0.0, min(timeout, nearest - now))
        ready = wait([job.conn for job in self.jobs], timeout=wait_for)
        for job in list(self.jobs):
            if job.conn in ready:
                self._drain(job)
            if job.outcome is not None:
                finished.append(self._finish(job, job.outcome))
                continue
            if job.crash is not None or (job.conn in ready and job.process.poll() is not None):
                finished.append(self._finish(job, self._crashed(job)))
                continue
            if time.monotonic() >= job.deadline(self.settings.time_limit):
                self._kill(job)
                finished.append(self._finish(job, self._timed_out(job)))
        return finished

    def _drain(self, job: _Job) -> None:
        try:
            while job.conn.poll():
                tag, payload = job.conn.recv()
                if tag == "ready":
                    job.ready_at = time.monotonic()
                elif tag == "attempt":
                    job.attempts.append(payload)
                elif tag == "result":
                    job.outcome = payload
                elif tag == "crash":
                    job.crash = payload
        except (EOFError, OSError):
            if job.outcome is None and job.crash is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    job.process.wait(timeout=5)
                code = job.process.returncode
                job.crash = ("worker_died", f"worker process exited with code {code} before reporting a result")

    def _crashed(self, job: _Job) -> DFTFailure:
        kind, reason = job.crash or ("worker_died", f"worker process exited with code {job.process.returncode}")
        return _failure(self.settings, kind, reason, job.attempts, frame=job.name)

    def _timed_out(self, job: _Job) -> DFTFailure:
        if job.ready_at is None:
            reason = f"worker did not start within {STARTUP_TIMEOUT:.0f} s"
            return _failure(self.settings, "worker_died", reason, job.attempts, frame=job.name)
        done = ", ".join(a["rung"] for a in job.attempts) or "none"
        reason = (
            f"time limit of {self.settings.time_limit:g} s exceeded "
            f"(finished SCF attempts: {done}; killed during the next step)"
        )
        return _failure(
            self.settings, "timeout", reason, job.attempts, frame=job.name, time_limit_s=self.settings.time_limit
        )

    def shutdown(self) -> None:
        for job in list(self.jobs):
            self._kill(job)
            with contextlib.suppress(Exception):
                job.conn.close()
        self.jobs.clear()


def _frame_name(index: int, atoms: Atoms) -> str:
    return f"frame {index} ({atoms.get_chemical_formula()})"


def label_frames(
    frames: Iterable[Atoms],
    settings: Optional[DFTSettings] = None,
    *,
    skip: Optional[Callable[[Atoms], bool]] = None,
    workers: int = 1,
    progress: bool = True,
    invalid: Literal["raise", "fail"] = "raise",
) -> Iterator[tuple[int, Outcome]]:
    """Label ``frames``, yielding ``(index, DFTResult | DFTFailure)`` as each one finishes.

    - ``skip(atoms) -> True`` leaves a frame out (already labelled at this level of
      theory: resume); skipped frames yield nothing.
    - Every remaining frame is validated before the first SCF starts. ``invalid="raise"``
      raises :class:`InvalidStructure`/:class:`ConfigError` naming the frame;
      ``invalid="fail"`` yields a ``DFTFailure(kind="invalid")`` for it instead.
    - Up to ``workers`` frames run at once, each in its own process, killed after
      ``settings.time_limit`` seconds of work (a ``timeout`` failure); the batch goes on.
    - Results arrive in completion order, so the caller can store each one at once.
      Frames are not modified. Closing the generator early kills the running workers.
    """
    settings = settings or DFTSettings()
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if invalid not in ("raise", "fail"):
        raise ConfigError(f"invalid must be 'raise' or 'fail', got {invalid!r}")
    settings.check()
    if settings.device == "gpu":
        from dft.backend import cuda_device_count, gpu_packages_installed

        if not gpu_packages_installed() or cuda_device_count() < 1:
            raise ConfigError("device 'gpu' requested but no CUDA GPU with cupy and gpu4pyscf is available")

    frames = list(frames)
    todo: deque[tuple[int, str, Atoms, FramePlan]] = deque()
    rejected: list[tuple[int, DFTFailure]] = []
    for index, atoms in enumerate(frames):
        if skip is not None and skip(atoms):
            continue
        name = _frame_name(index, atoms) if isinstance(atoms, Atoms) else f"frame {index}"
        try:
            plan = plan_frame(atoms, settings, name)
        except SelfplayError as exc:
            if invalid == "raise":
                raise
            rejected.append((index, _failure(settings, "invalid", str(exc), [], frame=name)))
            continue
        todo.append((index, name, atoms, plan))

    for item in rejected:
        yield item
    if not todo:
        return

    pool = _Pool(settings, workers)
    bar = _progress(progress, len(todo))
    try:
        task = bar.add_task("DFT single points", total=len(todo)) if bar else None
        while todo or pool.jobs:
            while todo and len(pool.jobs) < workers:
                index, name, atoms, plan = todo.popleft()
                pool.launch(index, name, atoms, plan)
            for index, outcome in pool.poll(timeout=1.0):
                if bar is not None:
                    bar.advance(task)
                if isinstance(outcome, DFTFailure):
                    log.warning("frame %d: %s failure: %s", index, outcome.kind, outcome.reason)
                yield index, outcome
    finally:
        pool.shutdown()
        if bar is not None:
            bar.stop()


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    )
    bar.start()
    return bar


def single_point(
    atoms: Atoms, settings: Optional[DFTSettings] = None, *, isolate: Optional[bool] = None
) -> Outcome:
    """Energy and forces (and stress for cells) of one frame: a result or a failure.

    Bad input raises :class:`InvalidStructure`/:class:`ConfigError` before any SCF. With
    ``isolate`` (default: when ``settings.time_limit`` is set) the frame runs in a child
    process that is killed after the time limit; ``isolate=False`` runs here, without a
    limit (handy for debugging and for tests).
    """
    settings = settings or DFTSettings()
    settings.check()
    name = _frame_name(0, atoms) if isinstance(atoms, Atoms) else "frame"
    plan = plan_frame(atoms, settings, name)
    if isolate is None:
        isolate = settings.time_limit is not None
    if not isolate:
        from dft.compute import compute_frame

        return compute_frame(atoms, settings, plan=plan, name=name)
    for _, outcome in label_frames([atoms], settings, workers=1, progress=False):
        return outcome
    raise RuntimeError("label_frames yielded nothing for one valid frame")  # pragma: no cover
