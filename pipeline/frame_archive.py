"""The explored-frames archive: one compressed npz per generation, bit-exact.

The explore stage stores its frames (positions, σ_F, descriptors, provenance) this way
in GridFS (``Generation.explored``), so a resumed generation selects from exactly the
frames that were explored.
"""

from __future__ import annotations

import io
import json

import numpy as np
from ase import Atoms

from pipeline.jsonable import json_default


def pack_frames(frames: list[Atoms]) -> bytes:
    """Explored frames as one compressed npz: exact floats, σ_F, descriptors, provenance."""
    sizes = np.array([len(a) for a in frames], dtype=np.int64)
    deviations = [a.arrays.get("force_deviation") for a in frames]
    descriptors = [a.info.get("descriptor") for a in frames]
    width = max((len(d) for d in descriptors if d is not None), default=0)
    descriptor_matrix = np.full((len(frames), width), np.nan)
    for i, d in enumerate(descriptors):
        if d is not None:
            descriptor_matrix[i] = np.asarray(d, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        offsets=np.concatenate([[0], np.cumsum(sizes)]),
        numbers=np.concatenate([a.numbers for a in frames]) if frames else np.zeros(0, int),
        positions=np.concatenate([a.positions for a in frames]) if frames else np.zeros((0, 3)),
        cells=np.stack([a.cell.array for a in frames]) if frames else np.zeros((0, 3, 3)),
        pbc=np.stack([a.pbc for a in frames]) if frames else np.zeros((0, 3), bool),
        force_deviation=np.concatenate(
            [d if d is not None else np.full(len(a), np.nan) for a, d in zip(frames, deviations)]
        )
        if frames
        else np.zeros(0),
        descriptors=descriptor_matrix,
        info=np.array(
            [json.dumps({k: v for k, v in a.info.items() if k != "descriptor"}, default=json_default) for a in frames]
        ),
    )
    return buffer.getvalue()


def unpack_frames(data: bytes) -> list[Atoms]:
    archive = np.load(io.BytesIO(data), allow_pickle=False)
    offsets = archive["offsets"]
    frames = []
    for i in range(len(offsets) - 1):
        lo, hi = offsets[i], offsets[i + 1]
        atoms = Atoms(
            numbers=archive["numbers"][lo:hi],
            positions=archive["positions"][lo:hi],
            cell=archive["cells"][i],
            pbc=archive["pbc"][i],
        )
        deviation = archive["force_deviation"][lo:hi]
        if not np.isnan(deviation).all():
            atoms.arrays["force_deviation"] = deviation.copy()
        atoms.info.update(json.loads(str(archive["info"][i])))
        descriptor = archive["descriptors"][i] if archive["descriptors"].shape[1] else None
        if descriptor is not None and not np.isnan(descriptor).all():
            atoms.info["descriptor"] = descriptor.copy()
        frames.append(atoms)
    return frames
