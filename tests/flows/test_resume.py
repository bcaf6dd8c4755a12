"""A generation killed mid-way resumes to exactly the labels of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pymongo
import pytest

from .conftest import REPO
from .helpers import assert_same_labels, tiny_config_file

pytestmark = [pytest.mark.mongo, pytest.mark.slow]


def start_generation(uri: str, workdir, config) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFPLAY_")}
    env.update(SELFPLAY_MONGODB_URI=uri, SELFPLAY_WORKDIR=str(workdir), SELFPLAY_RESOURCES__DFT_WORKERS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "--config", str(config), "run", "--no-prefect"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes the DFT workers too
    )


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]


def kill_when(process: subprocess.Popen, condition, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, (
            "the generation finished before the crash point: " + process.stdout.read()[-2000:]
        )
        assert time.time() < deadline, "crash point never reached"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # like a node dying: no clean-up of any kind
    process.wait()


def labels(db) -> dict:
    from pipeline import arrays

    return {d["frame_hash"]: (d["energy"], arrays.unpack(d["forces"], (d["n_atoms"], 3))) for d in db.labels.find()}


@pytest.mark.parametrize("backend", ["pyscf", "xtb", "ase"])
def test_killed_during_labelling_and_exploring_resumes_exactly(mongo_server_uri, tmp_path, backend):
    if backend == "xtb":
        pytest.importorskip("tblite")
    # xTB and EMT label a frame in milliseconds: enough frames that the kill, polled every
    # 50 ms, lands while labels are still missing. xTB reuses its worker (about 7 labels a
    # second), so it also labels more of them; EMT is given a process per frame
    # (fresh_worker), without which it would finish its labels before the kill.
    config = tiny_config_file(
        tmp_path,
        backend,
        random_count=None if backend == "pyscf" else 60,
        max_selected=40 if backend == "xtb" else None,
        dft={"fresh_worker": True} if backend == "ase" else None,
    )
    names = {kind: f"selfplay_resume_{kind}_{uuid.uuid4().hex[:6]}" for kind in ("reference", "crashed")}
    client = pymongo.MongoClient(mongo_server_uri)
    try:
        reference = f"{mongo_server_uri}/{names['reference']}"
        for _ in range(2):
            finish(start_generation(reference, tmp_path / "reference", config))

        crashed = f"{mongo_server_uri}/{names['crashed']}"
        db = client[names["crashed"]]

        # generation 0, killed after its first DFT label was stored
        process = start_generation(crashed, tmp_path / "crashed", config)
        kill_when(process, lambda: db.labels.count_documents({"generation": 0}) >= 1)
        state = db.generations.find_one({"number": 0})
        assert state["stages"]["label"]["status"] == "running"
        done_before = db.labels.count_documents({}) + db.failures.count_documents({})
        picked = db.frames.count_documents({"generation": 0})
        assert done_before < picked, "nothing was left to resume"
        finish(start_generation(crashed, tmp_path / "crashed", config))
        assert db.generations.find_one({"number": 0})["stages"]["label"]["attempts"] == 2

        # generation 1, killed in the middle of exploration (after its training completed)
        process = start_generation(crashed, tmp_path / "crashed", config)
        kill_when(
            process,
            lambda: (
                ((db.generations.find_one({"number": 1}) or {}).get("stages", {}).get("explore", {}).get("status"))
                == "running"
            ),
        )
        finish(start_generation(crashed, tmp_path / "crashed", config))
        state = db.generations.find_one({"number": 1})
        assert state["status"] == "completed"
        assert state["stages"]["train"]["attempts"] == 1  # completed stages are not redone
        assert state["stages"]["explore"]["attempts"] == 2

        reference_db = client[names["reference"]]
        assert_same_labels(labels(reference_db), labels(db))
        for name in ("labels", "failures", "frames"):
            assert db[name].count_documents({}) == reference_db[name].count_documents({}), name
        assert sorted(db.failures.distinct("frame_hash")) == sorted(reference_db.failures.distinct("frame_hash"))
        assert db.model_versions.count_documents({}) == 1
    finally:
        for name in names.values():
            client.drop_database(name)
        client.close()
