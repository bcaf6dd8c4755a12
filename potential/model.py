"""TeaNet-style E(3)-equivariant message passing, as an ensemble evaluated in one pass.

Every atom carries scalar (C0), vector (3 x C1) and rank-2 tensor (3 x 3 x C2) channels.
A bond e = (i <- j) with unit vector u and length r contributes messages built from a
Bessel radial basis times a polynomial cutoff envelope, times {1, u, u⊗u}, combined with
the neighbour's channels only by products that commute with rotations and reflections:

    scalars  <- s_j,  u·v_j,  uᵀ t_j u,  tr t_j
    vectors  <- s_j u,  (u·v_j) u,  v_j,  t_j u
    tensors  <- s_j u⊗u,  v_j⊗u,  t_j

After summation over neighbours, the atom updates its channels by residual steps: an MLP
on invariants (scalars, |vector|², trace and norm of tensors) gives the scalar update and
per-channel gates for the vector and tensor updates, and vector⊗vector outer products
feed the tensors. Nothing breaks O(3) symmetry, so the energy is invariant and the forces
equivariant by construction; translations and permutations enter only via r_e.

All weights carry a leading member dimension K: the K members run as batched matmuls on
one shared graph. Each member's forces come from the same single backward pass because
each member reads its own copy of the edge vectors (the members do not interact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.atoms import MAX_Z
from pipeline.errors import ConfigError, InvalidStructure
from potential.config import ModelConfig
from potential.graph import Graph, collate, frame_graph

DTYPES = {"float32": torch.float32, "float64": torch.float64}
N_ELEMENTS = MAX_Z + 1  # embedding rows, index = Z; row 0 is never used


class EnsembleLinear(nn.Module):
    """K independent linear maps applied as one batched matmul: (K, M, in) -> (K, M, out)."""

    def __init__(self, members: int, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(members, 1, n_out)) if bias else None

    def reset(self, generator: torch.Generator, gain: float = 1.0) -> None:
        n_in = self.weight.shape[1]
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator) * (gain / math.sqrt(n_in)))
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(shape[0], -1, shape[-1])
        out = torch.bmm(flat, self.weight) if self.bias is None else torch.baddbmm(self.bias, flat, self.weight)
        return out.reshape(*shape[:-1], out.shape[-1])


def bessel_basis(r: torch.Tensor, cutoff: float, n: int) -> torch.Tensor:
    """sqrt(2/rc) sin(n π r / rc) / r for n = 1..N, shape (..., N)."""
    freqs = torch.arange(1, n + 1, device=r.device, dtype=r.dtype) * (math.pi / cutoff)
    return math.sqrt(2.0 / cutoff) * torch.sin(r.unsqueeze(-1) * freqs) / r.unsqueeze(-1)


def polynomial_envelope(r: torch.Tensor, cutoff: float, p: int) -> torch.Tensor:
    """Smooth cutoff (DimeNet): 1 at r=0, value and first two derivatives 0 at r=rc."""
    d = r / cutoff
    env = 1.0 - (p + 1) * (p + 2) / 2.0 * d**p + p * (p + 2) * d ** (p + 1) - p * (p + 1) / 2.0 * d ** (p + 2)
    return torch.where(d < 1.0, env, torch.zeros_like(env))


class InteractionLayer(nn.Module):
    """One residual message-passing step on (s, v, t), for K members at once."""

    def __init__(self, cfg: ModelConfig, members: int):
        super().__init__()
        c0, c1, c2 = cfg.scalar_channels, cfg.vector_channels, cfg.tensor_channels
        self.c0, self.c1, self.c2 = c0, c1, c2
        # filter split: scalar messages (s, u·v, uᵀtu, tr t), vector messages
        # (s u, (u·v) u, v, t u), tensor messages (s u⊗u, v⊗u, t)
        self.filter_sizes = [c0, c1, c2, c2, c1, c1, c1, c2, c2, c2, c2]
        # node-level pre-mixes bring each source to the width of the message it feeds
        self.scalar_to_vector = EnsembleLinear(members, c0, c1)
        self.scalar_to_tensor = EnsembleLinear(members, c0, c2)
        self.vector_to_tensor = EnsembleLinear(members, c1, c2, bias=False)
        # post-mixes of the aggregated messages (no bias on equivariant channels)
        self.vector_mix = EnsembleLinear(members, c1 + c2, c1, bias=False)
        self.vector_outer_mix = EnsembleLinear(members, c1 + c2, c2, bias=False)
        self.tensor_mix = EnsembleLinear(members, c2, c2, bias=False)
        n_invariants = c0 + (c0 + c1 + 2 * c2) + c1 + 2 * c2
        self.update_in = EnsembleLinear(members, n_invariants, c0)
        self.update_out = EnsembleLinear(members, c0, c0 + c1 + 2 * c2)

    @property
    def n_filters(self) -> int:
        return sum(self.filter_sizes)

    def linears(self) -> list[EnsembleLinear]:
        return [m for m in self.modules() if isinstance(m, EnsembleLinear)]

    def forward(
        self,
        s: torch.Tensor,  # (K, N, C0)
        v: torch.Tensor | None,  # (K, N, 3, C1); None while still zero (first layer)
        t: torch.Tensor | None,  # (K, N, 3, 3, C2); None while still zero
        filters: torch.Tensor,  # (K, E, F) radial filters incl. envelope
        u: torch.Tensor,  # (K, E, 3) unit bond vectors
        src: torch.Tensor,
        dst: torch.Tensor,
        norm: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k, n = s.shape[0], s.shape[1]
        c0, c1, c2 = self.c0, self.c1, self.c2
        # Edge tensors dominate the cost (memory traffic more than FLOPs), so the terms below
        # are arranged to create few (K, E, ...) intermediates and few ops: products are
        # fused with additions (addcmul), a rank-2 message is built as w ⊗ u from a rank-1
        # w = c u + B instead of summing three 3x3 outer products, the trace of t is
        # gathered from the nodes instead of being sliced out of t_j (slicing would
        # zero-fill a full edge tensor in the backward pass), and scatter-adds go into
        # separate node buffers rather than through concatenated edge tensors.
        # f_s, f_uv, f_utu, f_tr are the leading filter columns; one split (whose backward
        # is a concatenation) rather than slices (whose backward zero-fills all columns)
        n_scalar = c0 + c1 + 2 * c2
        head = [c0, n_scalar - c0] if v is None else [n_scalar]
        f_scalar, *rest = torch.split(filters, head + self.filter_sizes[4:], -1)
        f_su, f_uvu, f_v, f_tu, f_suu, f_vu, f_t = rest[-7:]
        u_vec = u.unsqueeze(-1)  # (K, E, 3, 1): broadcasts over channels
        u_row = u.unsqueeze(2).unsqueeze(-1)  # (K, E, 1, 3, 1): the second index of a 3x3
        if v is None:
            # first layer: vectors and tensors are still zero, only scalars send messages
            packed = torch.cat([s, self.scalar_to_vector(s), self.scalar_to_tensor(s)], dim=-1)[:, dst]
            s_j, s2v_j, s2t_j = torch.split(packed, [c0, c1, c2], dim=-1)
            a = s.new_zeros(k, n, c0).index_add_(1, src, f_scalar * s_j)
            a = torch.cat([a, s.new_zeros(k, n, n_scalar - c0)], dim=-1)
            b = s.new_zeros(k, n, 3, c1).index_add_(1, src, (f_su * s2v_j).unsqueeze(2) * u_vec)
            b = torch.cat([b, s.new_zeros(k, n, 3, c2)], dim=-1)
            w = (f_suu * s2t_j).unsqueeze(2) * u_vec  # (K, E, 3, C2)
            tt = s.new_zeros(k, n, 3, 3, c2).index_add_(1, src, w.unsqueeze(3) * u_row)
        else:
            # one gather of everything the neighbour j sends
            trace = t.diagonal(dim1=2, dim2=3).sum(-1)  # (K, N, C2)
            packed = torch.cat(
                [
                    s,
                    trace,
                    self.scalar_to_vector(s),
                    self.scalar_to_tensor(s),
                    v.reshape(k, n, 3 * c1),
                    self.vector_to_tensor(v).reshape(k, n, 3 * c2),
                    t.reshape(k, n, 9 * c2),
                ],
                dim=-1,
            )[:, dst]
            e = packed.shape[1]
            s_j, trace_j, s2v_j, s2t_j, v_j, v2t_j, t_j = torch.split(
                packed, [c0, c2, c1, c2, 3 * c1, 3 * c2, 9 * c2], dim=-1
            )
            v_j = v_j.reshape(k, e, 3, c1)
            v2t_j = v2t_j.reshape(k, e, 3, c2)
            t_j = t_j.reshape(k, e, 3, 3, c2)
            # small contractions as broadcast products: einsum would turn them into
            # batched matmuls of 3x3 blocks, which are slower
            uv = (u_vec * v_j).sum(2)  # u·v_j (K, E, C1)
            tu = (t_j * u_row).sum(3)  # t_j u (K, E, 3, C2)
            utu = (u_vec * tu).sum(2)  # uᵀ t_j u
            scalar_msg = f_scalar * torch.cat([s_j, uv, utu, trace_j], dim=-1)
            a = s.new_zeros(k, n, n_scalar).index_add_(1, src, scalar_msg)
            radial = torch.addcmul(f_su * s2v_j, f_uvu, uv)  # coefficient of u in the vector message
            vector_msg = torch.addcmul(f_v.unsqueeze(2) * v_j, radial.unsqueeze(2), u_vec)
            b = torch.cat(
                [
                    s.new_zeros(k, n, 3, c1).index_add_(1, src, vector_msg),
                    s.new_zeros(k, n, 3, c2).index_add_(1, src, f_tu.unsqueeze(2) * tu),
                ],
                dim=-1,
            )
            # s u⊗u + v⊗u = (s u + v) ⊗ u
            w = torch.addcmul(f_vu.unsqueeze(2) * v2t_j, (f_suu * s2t_j).unsqueeze(2), u_vec)  # (K, E, 3, C2)
            tensor_msg = torch.addcmul(f_t.unsqueeze(2).unsqueeze(2) * t_j, w.unsqueeze(3), u_row)
            tt = s.new_zeros(k, n, 3, 3, c2).index_add_(1, src, tensor_msg)
        a, b, tt = a * norm, b * norm, tt * norm

        b_mixed = self.vector_mix(b)  # (K, N, 3, C1)
        b_outer = self.vector_outer_mix(b)  # (K, N, 3, C2)
        t_mixed = self.tensor_mix(tt)  # (K, N, 3, 3, C2)
        invariants = torch.cat(
            [
                s,
                a,
                (b_mixed * b_mixed).sum(2),
                t_mixed[:, :, 0, 0] + t_mixed[:, :, 1, 1] + t_mixed[:, :, 2, 2],
                (t_mixed * t_mixed).sum((2, 3)),
            ],
            dim=-1,
        )
        update = self.update_out(nn.functional.silu(self.update_in(invariants)))
        ds, gate_v, gate_t, gate_o = torch.split(update, [c0, c1, c2, c2], dim=-1)
        s = s + ds
        dv = b_mixed * gate_v.unsqueeze(2)
        v = dv if v is None else v + dv
        outer = b_outer.unsqueeze(3) * b_outer.unsqueeze(2)  # (K, N, 3, 3, C2)
        dt = t_mixed * gate_t.unsqueeze(2).unsqueeze(2) + outer * gate_o.unsqueeze(2).unsqueeze(2)
        t = dt if t is None else t + dt
        return s, v, t


@dataclass
class Prediction:
    """Raw model outputs with the member dimension first (torch tensors)."""

    energy: torch.Tensor  # (K, B) float64, total energy incl. element references
    forces: torch.Tensor | None  # (K, N, 3)
    virial: torch.Tensor | None  # (K, B, 3, 3) dE/dε (eV); stress = virial / V
    descriptor: torch.Tensor  # (K, B, D)


class EnsemblePotential(nn.Module):
    """K members of the equivariant network sharing one graph per call."""

    def __init__(
        self,
        config: ModelConfig,
        n_members: int = 4,
        *,
        element_refs: np.ndarray | None = None,
        energy_scale: float = 1.0,
        avg_num_neighbors: float = 12.0,
    ):
        super().__init__()
        if n_members < 1:
            raise ConfigError(f"ensemble needs at least one member, got {n_members}")
        self.config = config
        self.n_members = n_members
        k, cfg = n_members, config
        c0 = cfg.scalar_channels
        self.embedding = nn.Parameter(torch.empty(k, N_ELEMENTS, c0))
        self.radial_in = EnsembleLinear(k, cfg.radial_basis, cfg.radial_hidden)
        self.layers = nn.ModuleList(InteractionLayer(cfg, k) for _ in range(cfg.layers))
        self.radial_out = EnsembleLinear(
            k, cfg.radial_hidden, sum(layer.n_filters for layer in self.layers), bias=False
        )
        self.readout_in = EnsembleLinear(k, c0, cfg.readout_hidden)
        self.readout_out = EnsembleLinear(k, cfg.readout_hidden, 1)
        refs = np.zeros(N_ELEMENTS) if element_refs is None else np.asarray(element_refs, dtype=np.float64)
        if refs.shape != (N_ELEMENTS,):
            raise ConfigError(f"element_refs must have {N_ELEMENTS} entries (index = Z), got {refs.shape}")
        # float64 always (total energies of heavy elements are ~1e4-1e5 eV, beyond float32),
        # so a plain attribute that .to(dtype) leaves alone; saved in the checkpoint JSON
        self.element_refs = torch.as_tensor(refs, dtype=torch.float64)
        self.energy_scale = float(energy_scale)
        self.avg_num_neighbors = float(avg_num_neighbors)

    # ------------------------------------------------------------------ set-up
    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.element_refs = self.element_refs.to(device=self.embedding.device)
        return self

    def set_element_refs(self, refs: np.ndarray) -> None:
        refs = np.asarray(refs, dtype=np.float64)
        if refs.shape != (N_ELEMENTS,):
            raise ConfigError(f"element_refs must have {N_ELEMENTS} entries (index = Z), got {refs.shape}")
        self.element_refs = torch.as_tensor(refs, dtype=torch.float64, device=self.embedding.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.dtype

    @property
    def device(self) -> torch.device:
        return self.embedding.device

    @property
    def descriptor_size(self) -> int:
        c = self.config
        return self.n_members * (c.scalar_channels + c.vector_channels + c.tensor_channels)

    def reset_parameters(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.embedding.copy_(torch.randn(self.embedding.shape, generator=generator))
        self.radial_in.reset(generator)
        self.radial_out.reset(generator)
        for layer in self.layers:
            for linear in layer.linears():
                linear.reset(generator)
        self.readout_in.reset(generator)
        self.readout_out.reset(generator)
        if self.config.recurrent_init and len(self.layers) > 1:
            first = self.layers[0].state_dict()
            for layer in self.layers[1:]:
                layer.load_state_dict(first)
            with torch.no_grad():
                w = self.radial_out.weight.view(self.n_members, self.config.radial_hidden, len(self.layers), -1)
                w[:, :, 1:] = w[:, :, :1]

    def member(self, index: int) -> "EnsemblePotential":
        """A one-member ensemble holding a copy of member ``index``'s weights."""
        return self.members(range(index, index + 1))

    def members(self, indices) -> "EnsemblePotential":
        """A smaller ensemble holding a copy of the weights of the members ``indices``."""
        indices = list(indices)
        part = EnsemblePotential(
            self.config,
            len(indices),
            element_refs=self.element_refs.cpu().numpy(),
            energy_scale=self.energy_scale,
            avg_num_neighbors=self.avg_num_neighbors,
        )
        index = torch.as_tensor(indices, device=self.device)
        state = {name: value.detach().index_select(0, index) for name, value in self.state_dict().items()}
        part.load_state_dict(state)
        return part.to(device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ model
    def _interaction_energy(self, graph: Graph, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom learned energies (K, N) and final invariant features (K, N, D)."""
        cfg = self.config
        z = graph.numbers
        s = self.embedding[:, z]  # (K, N, C0)
        v = t = None  # zero until the first layer (an isolated atom still runs every layer)
        length = torch.linalg.vector_norm(r, dim=-1)  # (K, E)
        u = r / length.unsqueeze(-1)
        envelope = polynomial_envelope(length, cfg.cutoff, cfg.envelope_exponent).unsqueeze(-1)
        hidden = nn.functional.silu(self.radial_in(bessel_basis(length, cfg.cutoff, cfg.radial_basis)))
        # radial_out has no bias, so enveloping its (narrow) input envelopes the filters
        filters = torch.split(self.radial_out(hidden * envelope), [layer.n_filters for layer in self.layers], dim=-1)
        norm = 1.0 / self.avg_num_neighbors
        for layer, f in zip(self.layers, filters):
            s, v, t = layer(s, v, t, f, u, graph.src, graph.dst, norm)
        atom_energy = self.readout_out(nn.functional.silu(self.readout_in(s))).squeeze(-1) * self.energy_scale
        features = torch.cat([s, (v * v).sum(2), (t * t).sum((2, 3))], dim=-1)
        return atom_energy, features

    def forward(
        self, graph: Graph, *, forces: bool = True, stress: bool = False, create_graph: bool = False
    ) -> Prediction:
        k, b = self.n_members, graph.n_structures
        need_grad = forces or stress
        r = graph.edge_vectors.to(self.dtype).unsqueeze(0).expand(k, -1, -1)
        with torch.set_grad_enabled(need_grad or torch.is_grad_enabled()):
            if need_grad:
                r = r.clone().requires_grad_(True)
            atom_energy, features = self._interaction_energy(graph, r)
            learned = atom_energy.new_zeros(k, b).index_add_(1, graph.batch, atom_energy)
            force = virial = None
            if need_grad:
                (grad,) = torch.autograd.grad(learned.sum(), r, create_graph=create_graph, allow_unused=True)
                if grad is None:  # no edges: isolated atoms feel no force
                    grad = torch.zeros_like(r)
                if forces:
                    force = atom_energy.new_zeros(k, graph.n_nodes, 3)
                    force = force.index_add(1, graph.src, grad).index_add(1, graph.dst, -grad)
                if stress:
                    per_edge = r.detach().unsqueeze(-1) * grad.unsqueeze(-2)  # r_a g_b = dE/dε_ab
                    virial = atom_energy.new_zeros(k, b, 3, 3).index_add(1, graph.edge_batch, per_edge)
                    virial = 0.5 * (virial + virial.transpose(-1, -2))
        ref = atom_energy.new_zeros(b, dtype=torch.float64).index_add_(0, graph.batch, self.element_refs[graph.numbers])
        energy = learned.to(torch.float64) + ref.unsqueeze(0)
        counts = graph.n_atoms.to(features.dtype).clamp(min=1)
        descriptor = features.new_zeros(k, b, features.shape[-1]).index_add_(1, graph.batch, features.detach())
        descriptor = descriptor / counts.view(1, -1, 1)
        return Prediction(energy=energy, forces=force, virial=virial, descriptor=descriptor)

    # ------------------------------------------------------------------ frames
    def graphs(self, frames, names: list[str] | None = None):
        return [
            frame_graph(atoms, self.config.cutoff, names[i] if names else f"frame {i}")
            for i, atoms in enumerate(frames)
        ]

    #: memory one default ``evaluate`` call may take for the model's intermediates (bytes)
    EVALUATE_MEMORY_BYTES = 2 * 2**30

    def bytes_per_edge(self) -> int:
        """Upper estimate of the memory one edge costs in an energy + forces (+ stress) call.

        Dominated by what autograd keeps for the force backward pass and its gradients,
        per member: the radial filters of all layers and their gradient (2 x F), and per
        layer about three copies of the gathered neighbour features (s, tr t, the
        pre-mixed s, v, the pre-mixed v, t: C0 + 2 C1 + 2 C2 + 3 C1 + 3 C2 + 9 C2). With the
        default model in float32 this gives 6.4 kB per edge and member; measured on CPU
        (peak RSS of one 1024-atom cell, 44 k edges): 6.0 kB.
        """
        c = self.config
        n_filters = sum(layer.n_filters for layer in self.layers)
        gathered = c.scalar_channels + 4 * c.vector_channels + 14 * c.tensor_channels
        floats = 2 * n_filters + 3 * c.layers * gathered
        return self.n_members * floats * torch.finfo(self.dtype).bits // 8

    def memory_budget(self) -> int:
        """Bytes one model call may take for its intermediates.

        :attr:`EVALUATE_MEMORY_BYTES` on the CPU. On a GPU, half of the device memory free
        right now, if that is more: there the members run in parallel only when they fit
        together, and running them in parallel is what makes an ensemble cheap.
        """
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            # Blocks torch's allocator holds from earlier calls but does not use are free
            # to us too; without them the budget would shrink after every large call.
            cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            return max(self.EVALUATE_MEMORY_BYTES, (free + cached) // 2)
        return self.EVALUATE_MEMORY_BYTES

    def default_max_edges(self, memory_bytes: int | None = None) -> int:
        """Edges per model call so that one call stays within ``memory_bytes``
        (default :meth:`memory_budget`)."""
        budget = self.memory_budget() if memory_bytes is None else memory_bytes
        return max(1, int(budget // self.bytes_per_edge()))

    def evaluate(
        self, frames, *, stress: bool | None = None, max_edges: int | None = None, members: bool = False
    ) -> list[dict]:
        """Evaluate many structures in as few model calls as memory allows.

        Frames are grouped into calls of at most ``max_edges`` edges (default
        :meth:`default_max_edges`: on the CPU about 2 GiB of intermediates, 83 k edges for
        the default 4-member float32 model; on a GPU half its free memory); a single frame with more edges still runs alone in one call.
        Returns one dict per frame (numpy / float): ``energy`` (eV, ensemble mean),
        ``forces`` (n, 3), ``stress`` (6, Voigt xx yy zz yz xz xy, eV/Å³; fully periodic
        frames only, unless ``stress=False``), ``force_deviation`` (n,) σ_i =
        sqrt(mean_k |F_ik - F̄_i|²), ``energy_deviation`` (std of the members' total
        energies, eV), ``member_energies`` (K,), ``descriptor`` (members' mean-pooled
        invariant features, concatenated); with ``members=True`` also ``member_forces``
        (K, n, 3), e.g. for the gradient of the members' disagreement.
        """
        if isinstance(frames, (list, tuple)) and not frames:
            return []
        if max_edges is None:
            max_edges = self.default_max_edges()
        elif max_edges < 1:
            raise ConfigError(f"max_edges must be at least 1, got {max_edges}")
        graphs = self.graphs(list(frames))
        results: list[dict] = []
        start = 0
        while start < len(graphs):
            stop, edges = start, 0
            while stop < len(graphs) and (stop == start or edges + len(graphs[stop].src) <= max_edges):
                edges += len(graphs[stop].src)
                stop += 1
            results.extend(self.evaluate_graphs(graphs[start:stop], stress, members))
            start = stop
        return results

    def _predict_within_budget(self, graph: Graph, stress: bool) -> Prediction:
        """All members on one graph; in groups of members, one after the other, where
        the graph (one structure larger than ``max_edges``) would not fit the memory
        budget with all members at once. Beyond the budget the members gain nothing from
        running together (on CPU the work is per member and edge anyway, and the larger
        intermediates cost more than proportionally), so this bounds memory at no loss."""
        per_member = self.bytes_per_edge() // self.n_members * max(1, len(graph.src))
        group = max(1, int(self.memory_budget() // per_member))
        if group >= self.n_members:
            return self(graph, forces=True, stress=stress)
        parts = []
        for first in range(0, self.n_members, group):
            members = range(first, min(first + group, self.n_members))
            parts.append(self.members(members)(graph, forces=True, stress=stress))
        return Prediction(
            energy=torch.cat([p.energy.detach() for p in parts]),
            forces=torch.cat([p.forces.detach() for p in parts]),
            virial=torch.cat([p.virial.detach() for p in parts]) if parts[0].virial is not None else None,
            descriptor=torch.cat([p.descriptor for p in parts]),
        )

    def evaluate_graphs(self, graphs, stress: bool | None = None, members: bool = False) -> list[dict]:
        """:meth:`evaluate` on graphs built before (:meth:`graphs`), all in one model call:
        no grouping by memory, so the caller bounds the size (e.g. a benchmark timing the
        model alone, without the neighbour lists)."""
        want_stress = any(g.periodic for g in graphs) if stress is None else stress
        graph = collate(graphs, self.device, self.dtype)
        pred = self._predict_within_budget(graph, want_stress)
        energy = pred.energy.detach().cpu().numpy()  # (K, B)
        forces = pred.forces.detach().to(torch.float64).cpu().numpy()  # (K, N, 3)
        mean_forces = forces.mean(0)
        deviation = np.sqrt(((forces - mean_forces) ** 2).sum(-1).mean(0))
        descriptor = pred.descriptor.to(torch.float64).cpu().numpy()  # (K, B, D)
        virial = pred.virial.detach().to(torch.float64).cpu().numpy() if pred.virial is not None else None
        out = []
        for b, g in enumerate(graphs):
            lo, hi = graph.atom_offsets[b], graph.atom_offsets[b + 1]
            result = {
                "energy": float(energy[:, b].mean()),
                "member_energies": energy[:, b].copy(),
                "energy_deviation": float(energy[:, b].std()),
                "forces": mean_forces[lo:hi].copy(),
                "force_deviation": deviation[lo:hi].copy(),
                "descriptor": descriptor[:, b].reshape(-1).copy(),
            }
            if members:
                result["member_forces"] = forces[:, lo:hi].copy()
            if virial is not None and g.periodic and (stress is None or stress):
                sigma = virial[:, b].mean(0) / g.volume
                result["stress"] = sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]].copy()
            out.append(result)
        return out


def build_ensemble(
    config: ModelConfig | None = None,
    n_members: int = 4,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
    element_refs: dict[int, float] | np.ndarray | None = None,
    energy_scale: float = 1.0,
    avg_num_neighbors: float = 12.0,
) -> EnsemblePotential:
    """A fresh, untrained ensemble (every element H..Bi accepted).

    ``element_refs`` maps Z to a reference energy per atom (eV); untrained ensembles
    predict energies of arbitrary scale, useful only for their disagreement.
    """
    config = config or ModelConfig()
    refs = np.zeros(N_ELEMENTS)
    if isinstance(element_refs, dict):
        for z, value in element_refs.items():
            if not 1 <= int(z) <= MAX_Z:
                raise InvalidStructure(f"element reference for Z={z} outside the supported range 1..{MAX_Z}")
            refs[int(z)] = float(value)
    elif element_refs is not None:
        refs = np.asarray(element_refs, dtype=np.float64)
    model = EnsemblePotential(
        config, n_members, element_refs=refs, energy_scale=energy_scale, avg_num_neighbors=avg_num_neighbors
    )
    model.reset_parameters(seed)
    return model.to(device=resolve_device(device), dtype=DTYPES[config.dtype])


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> cuda when available else cpu; an unavailable cuda is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available")
    return device
