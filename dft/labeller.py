"""The labeller protocol: one way to label a frame, whichever code computes the number.

A *kind* of labeller is a frozen pydantic settings model with a discriminator field
``backend`` and these methods; the runner, :func:`dft.single_point`,
:func:`dft.label_frames`, the label stage and ``selfplay label`` go only through them:

``theory_spec() -> dict`` / ``theory_key() -> str``
    everything that changes the number, and its 16-hex SHA-256 (the key labels are
    stored under; execution settings such as ``time_limit`` and ``threads`` stay out).
``check()``
    settings-level checks before any work (unknown method, calculator that does not
    import...), a one-line :class:`~pipeline.errors.ConfigError`.
``plan(atoms, name)``
    validates one frame (``InvalidStructure``/``ConfigError``), returns a picklable plan.
``preload(plan)``
    imports the kind's libraries in the worker before its time-limit clock starts.
``compute(atoms, plan, *, on_attempt, name, workdir)``
    in this process; a ``DFTResult`` or a ``DFTFailure`` with every attempt, never an
    exception for a valid frame.
``uses_workdir`` (class attribute)
    whether ``compute`` needs a working directory of its own per frame.
``reuse_worker`` (optional class attribute, default False)
    whether one worker process may label frame after frame (the time limit still kills
    it, and a killed or crashed worker is never reused); otherwise each frame gets a fresh
    process.

and the common fields ``time_limit``, ``threads`` and ``dispersion``. The kinds:
``pyscf`` (:class:`~dft.settings.DFTSettings`, the default), ``xtb``
(:class:`~dft.xtb.XTBSettings`) and ``ase`` (:class:`~dft.ase_calculator.ASESettings`).
Dispersion, process isolation, time limits, failure records, resume and progress are
the protocol's (here and in :mod:`dft.runner`), not each kind's.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Union

from ase import Atoms
from pydantic import Discriminator, Tag, TypeAdapter, ValidationError

from dft.ase_calculator import ASESettings
from dft.results import DFTFailure, DFTResult
from dft.settings import DFTSettings
from dft.xtb import XTBSettings
from pipeline.errors import ConfigError, validation_message

log = logging.getLogger(__name__)

#: The labeller kinds, by the value of their ``backend`` field.
BACKENDS = ("pyscf", "xtb", "ase")
DEFAULT_BACKEND = "pyscf"


def _backend_of(value: Any) -> Optional[str]:
    # A mapping without "backend" is PySCF settings: every config written before the
    # other kinds existed keeps its meaning (and its labels' key).
    if isinstance(value, dict):
        return value.get("backend", DEFAULT_BACKEND)
    return getattr(value, "backend", None)


LabellerSettings = Annotated[
    Union[
        Annotated[DFTSettings, Tag("pyscf")],
        Annotated[XTBSettings, Tag("xtb")],
        Annotated[ASESettings, Tag("ase")],
    ],
    Discriminator(
        _backend_of,
        custom_error_type="unknown_backend",
        custom_error_message=f"backend must be one of {', '.join(BACKENDS)}",
    ),
]

SETTINGS_ADAPTER: TypeAdapter = TypeAdapter(LabellerSettings)


def labeller_settings(data: Any = None, source: str = "dft") -> Any:
    """The settings of the right kind for ``data`` (a mapping, or settings already built).

    ``backend`` absent means ``pyscf``. Problems raise one :class:`ConfigError` line
    naming ``source`` and the field.
    """
    if data is None:
        data = {}
    try:
        return SETTINGS_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, source, dotted=True)) from None


def check_settings(settings: Any) -> None:
    """Every settings-level check of a kind, its dispersion correction included."""
    settings.check()
    if getattr(settings, "dispersion", None):
        from dft import dispersion

        check = getattr(dispersion, "check_dispersion", None)
        if check is not None:
            check(settings)


def preload(settings: Any, plan: Any) -> None:
    """Import what the frame will need in this (worker) process."""
    settings.preload(plan)
    if getattr(settings, "dispersion", None):
        import dft.dispersion  # noqa: F401


def label_in_process(
    atoms: Atoms,
    settings: Any,
    plan: Any,
    *,
    on_attempt: Optional[Callable[[dict], None]] = None,
    name: str = "frame",
    workdir: Optional[Path] = None,
) -> DFTResult | DFTFailure:
    """One frame in this process: the kind's single point, then its dispersion correction."""
    outcome = settings.compute(atoms, plan, on_attempt=on_attempt, name=name, workdir=workdir)
    if not outcome.ok or not getattr(settings, "dispersion", None):
        return outcome
    try:
        from dft.dispersion import add_dispersion

        return add_dispersion(atoms, outcome, settings)
    except Exception as exc:  # a valid frame yields a result or a recorded failure
        from dft.results import classify_exception, describe_exception

        log.debug("%s: dispersion failed\n%s", name, traceback.format_exc())
        return DFTFailure(
            reason=f"{settings.dispersion} dispersion correction failed: {describe_exception(exc)}",
            kind=classify_exception(exc),
            theory_key=settings.theory_key(),
            attempts=list(outcome.info.get("attempts") or []),
            info={"theory_key": settings.theory_key(), "theory": settings.theory_spec(), "frame": name},
        )
