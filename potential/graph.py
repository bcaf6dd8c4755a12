"""Radius graphs with periodic images, and batching of many structures into one graph.

Edges are directed and complete (both i->j and j->i); an edge e from ``src`` (the atom
that receives the message) to ``dst`` (the neighbour) carries the vector

    r_e = x[dst] - x[src] + S_e @ cell

with S_e the integer image shift. The model differentiates the energy with respect to
the edge vectors; forces and the virial follow from those edge gradients, so that the
geometry is built once per call in float64 on the host and only ``r_e`` enters autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from pipeline.atoms import check_atoms, distance_problem
from pipeline.errors import InvalidStructure


@dataclass
class FrameGraph:
    """Neighbour list of one structure (numpy, host memory)."""

    numbers: np.ndarray  # (n,) int64
    positions: np.ndarray  # (n, 3) float64
    cell: np.ndarray  # (3, 3) float64
    pbc: np.ndarray  # (3,) bool
    src: np.ndarray  # (e,) int64
    dst: np.ndarray  # (e,) int64
    edge_vectors: np.ndarray  # (e, 3) float64

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def periodic(self) -> bool:
        return bool(self.pbc.all())

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell))) if self.periodic else 0.0


def validate_frame(atoms: Atoms, name: str) -> None:
    """Cheap checks done before a neighbour list (:func:`pipeline.atoms.check_atoms`
    without the distances: overlap is checked from the list, see :func:`frame_graph`)."""
    check_atoms(atoms, name, distances=False)


def neighbor_list(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list ``(src, dst, integer shifts)`` within ``cutoff`` (Å).

    vesin (cell lists, any cell size including cells shorter than the cutoff) for open,
    fully and partially periodic systems; ASE's neighbour list where vesin refuses the
    box (e.g. a degenerate cell vector along a non-periodic direction).
    """
    from vesin import NeighborList

    positions = np.ascontiguousarray(atoms.positions, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        box = np.zeros((3, 3))
        periodic: bool | list[bool] = False
    else:
        box = np.ascontiguousarray(atoms.cell.array, dtype=np.float64)
        periodic = True if pbc.all() else [bool(p) for p in pbc]
    try:
        src, dst, shifts = NeighborList(cutoff=cutoff, full_list=True).compute(
            points=positions, box=box, periodic=periodic, quantities="ijS"
        )
    except Exception:  # vesin rejects degenerate boxes in mixed pbc; ASE copes
        from ase.neighborlist import neighbor_list as ase_neighbor_list

        src, dst, shifts = ase_neighbor_list("ijS", atoms, cutoff)
    return src.astype(np.int64), dst.astype(np.int64), shifts.astype(np.int64)


def frame_graph(atoms: Atoms, cutoff: float, name: str = "frame") -> FrameGraph:
    """Validated neighbour graph of one structure; raises :class:`InvalidStructure`."""
    validate_frame(atoms, name)
    src, dst, shifts = neighbor_list(atoms, cutoff)
    positions = np.asarray(atoms.positions, dtype=np.float64)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    vectors = positions[dst] - positions[src] + shifts @ cell
    if len(vectors):
        problem = distance_problem(float(np.sqrt(np.min(np.einsum("ea,ea->e", vectors, vectors)))))
        if problem:
            raise InvalidStructure(f"{name}: {problem}")
    return FrameGraph(
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=positions,
        cell=cell,
        pbc=np.asarray(atoms.pbc, dtype=bool).copy(),
        src=src,
        dst=dst,
        edge_vectors=vectors,
    )


@dataclass
class Graph:
    """Many structures concatenated into one graph (torch, on the model's device)."""

    numbers: torch.Tensor  # (N,) long
    batch: torch.Tensor  # (N,) long, structure index of each atom
    src: torch.Tensor  # (E,) long
    dst: torch.Tensor  # (E,) long
    edge_vectors: torch.Tensor  # (E, 3)
    edge_batch: torch.Tensor  # (E,) long
    n_atoms: torch.Tensor  # (B,) long
    volumes: torch.Tensor  # (B,), 0 for structures that are not fully periodic
    periodic: torch.Tensor  # (B,) bool, fully periodic
    atom_offsets: np.ndarray  # (B+1,) host copy, to split per-atom results

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.numbers.shape[0])


def collate(frames: list[FrameGraph], device: torch.device | str, dtype: torch.dtype) -> Graph:
    """Concatenate frame graphs, renumbering atoms; one structure index per atom."""
    if not frames:
        raise InvalidStructure("no structures to evaluate")
    sizes = np.array([f.n_atoms for f in frames], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    edge_counts = np.array([len(f.src) for f in frames], dtype=np.int64)
    src = np.concatenate([f.src + o for f, o in zip(frames, offsets[:-1])])
    dst = np.concatenate([f.dst + o for f, o in zip(frames, offsets[:-1])])
    vectors = np.concatenate([f.edge_vectors for f in frames]).reshape(-1, 3)
    numbers = np.concatenate([f.numbers for f in frames])
    batch = np.repeat(np.arange(len(frames)), sizes)
    edge_batch = np.repeat(np.arange(len(frames)), edge_counts)
    as_long = dict(device=device, dtype=torch.long)
    return Graph(
        numbers=torch.as_tensor(numbers, **as_long),
        batch=torch.as_tensor(batch, **as_long),
        src=torch.as_tensor(src, **as_long),
        dst=torch.as_tensor(dst, **as_long),
        edge_vectors=torch.as_tensor(vectors, device=device, dtype=dtype),
        edge_batch=torch.as_tensor(edge_batch, **as_long),
        n_atoms=torch.as_tensor(sizes, **as_long),
        volumes=torch.as_tensor([f.volume for f in frames], device=device, dtype=dtype),
        periodic=torch.as_tensor([f.periodic for f in frames], device=device, dtype=torch.bool),
        atom_offsets=offsets,
    )
