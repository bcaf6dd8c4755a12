"""Single points under a wall-clock limit, one child process per frame, and the batch API.

Every labeller kind (dft/labeller.py: PySCF, xTB, any ASE calculator) runs through here
alike. PySCF has no time limit of its own, and a CUDA context or a fragmented GPU memory pool is
only reliably released when its process ends. Each frame therefore runs in a fresh
``spawn`` child; the parent waits on a pipe, receives each SCF attempt as it finishes,
and kills the child when the frame's time is up. The clock starts when the child reports
that it has imported its libraries, so ``time_limit`` measures the work itself; the
start-up gets its own, generous allowance (:data:`STARTUP_TIMEOUT`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

from ase import Atoms

from dft.results import DFTFailure, DFTResult
from dft.settings import DFTSettings
from dft.validate import FramePlan
from pipeline.errors import ConfigError, SelfplayError
from pipeline.processes import PARENT_PID_VARIABLE, die_with_parent

log = logging.getLogger(__name__)

#: Seconds a child may take to start and import PySCF (and GPU4PySCF) before the frame
#: counts as failed; not part of the frame's time limit.
STARTUP_TIMEOUT = 300.0

Outcome = DFTResult | DFTFailure


def _clean_frame(atoms: Atoms) -> Atoms:
    """A copy with only what the SCF needs (no calculator, no arrays that may not pickle)."""
    info = {k: atoms.info[k] for k in ("charge", "spin") if k in atoms.info}
    return Atoms(
        numbers=atoms.numbers.copy(),
        positions=atoms.positions.copy(),
        cell=atoms.cell.array.copy(),
        pbc=atoms.pbc.copy(),
        info=info,
    )


def _child_main(conn: Connection, atoms: Atoms, settings, plan, name: str, workdir: Optional[str] = None) -> bool:
    """Label one frame in a worker, report through ``conn``; False when it crashed."""
    try:
        from dft import labeller

        labeller.preload(settings, plan)
        conn.send(("ready", None))
        outcome = labeller.label_in_process(
            atoms,
            settings,
            plan,
            on_attempt=lambda record: conn.send(("attempt", record)),
            name=name,
            workdir=Path(workdir) if workdir else None,
        )
        conn.send(("result", outcome))
        return True
    except BaseException as exc:  # noqa: BLE001 - anything here must reach the parent as a failure
        from dft.results import classify_exception, describe_exception

        try:
            conn.send(("crash", (classify_exception(exc), describe_exception(exc))))
        except Exception:
            pass
        return False


def preload_pyscf(plan: FramePlan, settings: DFTSettings) -> None:
    """Import what a PySCF frame will need, so that start-up is not charged to its time limit."""
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


def worker_entry() -> None:
    """``python -m dft._worker FD``: read jobs from stdin, report on file descriptor FD.

    One pickled job after another until stdin closes (the parent closes it after the only
    job of kinds that want a fresh process per frame); a crash ends the worker. A plain
    subprocess rather than ``multiprocessing``: a spawned multiprocessing child re-runs the
    caller's ``__main__``, which breaks scripts without a main guard.
    """
    die_with_parent()
    conn = Connection(int(sys.argv[1]), readable=False)
    try:
        while True:
            try:
                atoms, settings, plan, name, workdir = pickle.load(sys.stdin.buffer)
            except EOFError:
                break
            if not _child_main(conn, atoms, settings, plan, name, workdir):
                break
    finally:
        conn.close()


@dataclass
class _Worker:
    """A worker process, and the pipe it reports on."""

    process: Any
    conn: Connection


@dataclass
class _Job:
    index: int
    name: str
    worker: _Worker
    launched: float
    ready_at: Optional[float] = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    outcome: Optional[Outcome] = None
    crash: Optional[tuple[str, str]] = None

    @property
    def process(self):
        return self.worker.process

    @property
    def conn(self) -> Connection:
        return self.worker.conn

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


def _failure(settings, kind: str, reason: str, attempts: list, **info: Any) -> DFTFailure:
    return DFTFailure(
        reason=reason,
        kind=kind,
        theory_key=settings.theory_key(),
        attempts=list(attempts),
        info={"theory_key": settings.theory_key(), "theory": settings.theory_spec(), **info},
    )


def _wants_gpu(settings) -> bool:
    """Whether the settings may run on a GPU (only kinds with a ``device`` field do)."""
    return getattr(settings, "device", "cpu") != "cpu"


class _Pool:
    """Up to ``workers`` child processes, each labelling one frame at a time.

    Kinds whose settings say ``reuse_worker`` (a cheap code with no state between frames:
    xTB) keep a worker that finished a frame for the next one, which saves the worker's
    start-up, seconds against milliseconds of work; a worker that timed out or crashed is
    never reused. The others get a fresh process per frame (PySCF: GPU memory is only
    reliably returned when its process ends).
    """

    def __init__(self, settings, workers: int):
        self.settings = settings
        self.workers = workers
        self.jobs: list[_Job] = []
        self.reuse = bool(getattr(settings, "reuse_worker", False))
        self.idle: list[_Worker] = []
        self.spawned = 0
        self.want_gpu = False
        self.n_gpus = 0
        if _wants_gpu(settings):
            from dft.backend import cuda_device_count, gpu_packages_installed

            self.want_gpu = gpu_packages_installed()
            self.n_gpus = cuda_device_count() if self.want_gpu else 0
        if settings.threads is not None:
            self.threads: Optional[int] = settings.threads
        elif os.environ.get("OMP_NUM_THREADS") or workers == 1:
            self.threads = None  # the user's (or the library's default) setting stands
        else:
            self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._slot = 0

    def launch(self, index: int, name: str, atoms: Atoms, plan, workdir: Optional[Path] = None) -> None:
        worker = None
        while self.idle and worker is None:
            candidate = self.idle.pop()
            if candidate.process.poll() is None:
                worker = candidate
            else:
                self._discard(candidate)
        worker = worker or self._spawn()
        try:
            job = (_clean_frame(atoms), self.settings, plan, name, str(workdir) if workdir else None)
            worker.process.stdin.write(pickle.dumps(job))
            worker.process.stdin.flush()
            if not self.reuse:
                worker.process.stdin.close()
        except OSError:  # the child died at once; poll() reports it
            pass
        self.jobs.append(_Job(index=index, name=name, worker=worker, launched=time.monotonic()))

    def _spawn(self) -> _Worker:
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
                start_new_session=True,  # its own process group, killed whole on time out
            )
        finally:
            os.close(write_fd)
        self.spawned += 1
        return _Worker(process=process, conn=Connection(read_fd, writable=False))

    def _finish(self, job: _Job, outcome: Outcome) -> tuple[int, Outcome]:
        self.jobs.remove(job)
        if self.reuse and job.outcome is not None and job.process.poll() is None:
            self.idle.append(job.worker)  # a clean finish: ready for the next frame
            return job.index, outcome
        with contextlib.suppress(Exception):
            job.conn.close()
        with contextlib.suppress(Exception):
            job.process.stdin.close()
        try:
            job.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill(job.worker)
        return job.index, outcome

    def _kill(self, worker: _Worker) -> None:
        # The whole process group: a code the worker started (an ASE calculator's mpirun
        # vasp) must not outlive its frame's time limit.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        if worker.process.poll() is None:
            worker.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=10)

    def _discard(self, worker: _Worker) -> None:
        self._kill(worker)
        for stream in (worker.conn, worker.process.stdin):
            with contextlib.suppress(Exception):
                stream.close()

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
                self._kill(job.worker)
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
        done = ", ".join(str(a.get("rung", "?")) for a in job.attempts) or "none"
        reason = (
            f"time limit of {self.settings.time_limit:g} s exceeded "
            f"(finished attempts: {done}; killed during the next step)"
        )
        return _failure(
            self.settings, "timeout", reason, job.attempts, frame=job.name, time_limit_s=self.settings.time_limit
        )

    def shutdown(self) -> None:
        for worker in [job.worker for job in self.jobs] + self.idle:
            self._discard(worker)
        self.jobs.clear()
        self.idle.clear()


def _frame_name(index: int, atoms: Atoms) -> str:
    return f"frame {index} ({atoms.get_chemical_formula()})"


def frame_workdir(base: Path, settings, atoms: Atoms, taken: set[str]) -> Path:
    """``base/<theory key>/<frame hash>``: where a kind that writes files labels this frame.

    Named by content, so a frame resumed after a crash finds its own folder again; a frame
    given twice in one batch gets a suffix (two calculations never share a folder).
    """
    from pipeline.hashing import frame_hash

    stem = frame_hash(atoms)[:16]
    folder, n = stem, 1
    while folder in taken:
        n += 1
        folder = f"{stem}-{n}"
    taken.add(folder)
    path = Path(base) / settings.theory_key() / folder
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _workdir_base(settings, workdir: Optional[Path]):
    """The folder frames get their working directories in (None for kinds that need none).

    Without a ``workdir`` a temporary folder serves the batch and is removed after it.
    """
    if not settings.uses_workdir:
        yield None
    elif workdir is not None:
        yield Path(workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="selfplay-label-") as folder:
            yield Path(folder)


def _check_settings(settings) -> None:
    from dft.labeller import check_settings

    check_settings(settings)
    if getattr(settings, "device", None) == "gpu":
        from dft.backend import cuda_device_count, gpu_packages_installed

        if not gpu_packages_installed() or cuda_device_count() < 1:
            raise ConfigError("device 'gpu' requested but no CUDA GPU with cupy and gpu4pyscf is available")


def label_frames(
    frames: Iterable[Atoms],
    settings=None,
    *,
    skip: Optional[Callable[[Atoms], bool]] = None,
    workers: int = 1,
    progress: bool = True,
    invalid: Literal["raise", "fail"] = "raise",
    workdir: Optional[Path] = None,
) -> Iterator[tuple[int, Outcome]]:
    """Label ``frames``, yielding ``(index, DFTResult | DFTFailure)`` as each one finishes.

    - ``settings``: any labeller kind (:data:`dft.labeller.LabellerSettings`), default
      :class:`DFTSettings`.
    - ``skip(atoms) -> True`` leaves a frame out (already labelled at this level of
      theory: resume); skipped frames yield nothing.
    - Every remaining frame is validated before the first single point starts.
      ``invalid="raise"`` raises :class:`InvalidStructure`/:class:`ConfigError` naming the
      frame; ``invalid="fail"`` yields a ``DFTFailure(kind="invalid")`` for it instead.
    - Up to ``workers`` frames run at once, each in its own process, killed after
      ``settings.time_limit`` seconds of work (a ``timeout`` failure); the batch goes on.
    - Kinds that write files (``settings.uses_workdir``) label each frame in
      ``workdir/<theory key>/<frame hash>`` (a temporary folder without ``workdir``).
    - Results arrive in completion order, so the caller can store each one at once.
      Frames are not modified. Closing the generator early kills the running workers.
    """
    settings = settings or DFTSettings()
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if invalid not in ("raise", "fail"):
        raise ConfigError(f"invalid must be 'raise' or 'fail', got {invalid!r}")
    _check_settings(settings)

    frames = list(frames)
    todo: deque[tuple[int, str, Atoms, Any]] = deque()
    rejected: list[tuple[int, DFTFailure]] = []
    for index, atoms in enumerate(frames):
        if skip is not None and skip(atoms):
            continue
        name = _frame_name(index, atoms) if isinstance(atoms, Atoms) else f"frame {index}"
        try:
            plan = settings.plan(atoms, name)
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

    with _workdir_base(settings, workdir) as base:
        taken: set[str] = set()
        pool = _Pool(settings, workers)
        bar = _progress(progress, len(todo))
        try:
            task = bar.add_task("single points", total=len(todo)) if bar else None
            while todo or pool.jobs:
                while todo and len(pool.jobs) < workers:
                    index, name, atoms, plan = todo.popleft()
                    folder = frame_workdir(base, settings, atoms, taken) if base is not None else None
                    pool.launch(index, name, atoms, plan, folder)
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
    atoms: Atoms, settings=None, *, isolate: Optional[bool] = None, workdir: Optional[Path] = None
) -> Outcome:
    """Energy and forces (and stress for cells) of one frame: a result or a failure.

    ``settings`` is any labeller kind (default :class:`DFTSettings`). Bad input raises
    :class:`InvalidStructure`/:class:`ConfigError` before any work. With ``isolate``
    (default: when ``settings.time_limit`` is set) the frame runs in a child process that
    is killed after the time limit; ``isolate=False`` runs here, without a limit (handy
    for debugging and for tests). ``workdir`` as for :func:`label_frames`.
    """
    settings = settings or DFTSettings()
    if isolate is None:
        isolate = settings.time_limit is not None
    if isolate:
        for _, outcome in label_frames([atoms], settings, workers=1, progress=False, workdir=workdir):
            return outcome
        raise RuntimeError("label_frames yielded nothing for one valid frame")  # pragma: no cover
    from dft.labeller import label_in_process

    _check_settings(settings)
    name = _frame_name(0, atoms) if isinstance(atoms, Atoms) else "frame"
    plan = settings.plan(atoms, name)
    with _workdir_base(settings, workdir) as base:
        folder = frame_workdir(base, settings, atoms, set()) if base is not None else None
        return label_in_process(atoms, settings, plan, name=name, workdir=folder)
