"""The model registry: each generation's ensemble as a checkpoint archive in GridFS.

:class:`~pipeline.documents.ModelVersion` holds the archive, its checksum, the
hyperparameters and what it was trained on; :func:`fetch_model` unpacks it once into a
local cache, checking the checksum.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Optional

from pipeline.documents import ModelVersion
from pipeline.errors import StoreError
from pipeline.jsonable import json_default


def save_model_version(number: int, directory: Path, metrics: dict, trained_on: dict) -> ModelVersion:
    """Archive a checkpoint directory into GridFS as this generation's model (idempotent)."""
    name = f"gen-{number:04d}"
    existing = ModelVersion.objects(name=name).first()
    if existing is not None:
        return existing
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(Path(directory).iterdir()):
            archive.add(path, arcname=path.name)
    payload = buffer.getvalue()
    meta = json.loads((Path(directory) / "model.json").read_text()) if (Path(directory) / "model.json").exists() else {}
    model = ModelVersion(
        generation=number,
        name=name,
        checkpoint_sha256=hashlib.sha256(payload).hexdigest(),
        hyperparameters=json.loads(json.dumps(meta, default=json_default)),
        metrics=metrics,
        trained_on=trained_on,
    )
    model.weights.put(payload, filename=f"{name}.tar.gz", content_type="application/gzip")
    try:
        model.save(force_insert=True)
    except Exception:
        model.weights.delete()
        existing = ModelVersion.objects(name=name).first()
        if existing is None:
            raise
        return existing
    return model


def fetch_model(model: ModelVersion, cache: Path) -> Path:
    """The checkpoint directory of ``model``, unpacked from GridFS into ``cache`` once."""
    target = Path(cache) / model.name
    marker = target / ".sha256"
    if marker.exists() and marker.read_text() == model.checkpoint_sha256:
        return target
    payload = model.weights.read()
    if hashlib.sha256(payload).hexdigest() != model.checkpoint_sha256:
        raise StoreError(f"model {model.name}: stored weights do not match their checksum")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as archive:
        archive.extractall(target, filter="data")
    marker.write_text(model.checkpoint_sha256)
    return target


def latest_model(before: Optional[int] = None) -> Optional[ModelVersion]:
    query = ModelVersion.objects if before is None else ModelVersion.objects(generation__lt=before)
    return query.order_by("-generation").first()
