"""Several processes inserting overlapping frames and labels end with one copy of each."""

import multiprocessing

import numpy as np
import pytest

from .helpers import emt_dataset

N_PROCESSES = 4


def insert_worker(uri: str, order_seed: int, barrier) -> None:
    from pipeline.store import add_frame, add_label, connect

    connect(uri)
    frames = emt_dataset(8, seed=7)
    order = np.random.default_rng(order_seed).permutation(len(frames))
    barrier.wait()  # start together to maximise collisions
    for index in order:
        atoms = frames[index]
        frame, _ = add_frame(atoms, source=f"worker-{order_seed}")
        add_label(frame, theory="emt", energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        add_label(frame, theory="emt-2", energy=atoms.get_potential_energy(), forces=atoms.get_forces())


@pytest.mark.mongo
def test_parallel_inserts_leave_one_copy(server_store):
    from pipeline.documents import Frame, Label
    from pipeline.hashing import frame_hash

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(N_PROCESSES)
    workers = [context.Process(target=insert_worker, args=(server_store, seed, barrier)) for seed in range(N_PROCESSES)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0] * N_PROCESSES
    expected = {frame_hash(a) for a in emt_dataset(8, seed=7)}
    assert {f.hash for f in Frame.objects} == expected
    assert Frame.objects.count() == len(expected)
    assert Label.objects.count() == 2 * len(expected)
    for theory in ("emt", "emt-2"):
        assert sorted(Label.objects(theory=theory).distinct("frame_hash")) == sorted(expected)
