import pytest

from pipeline.errors import StoreError, StoreUnavailable
from pipeline.store import connect

from ..conftest import free_port


def test_unreachable_server_is_one_clear_line():
    port = free_port()  # nothing listens there
    with pytest.raises(StoreUnavailable) as error:
        connect(f"mongodb://someone:hunter2@127.0.0.1:{port}/x", timeout_ms=500)
    message = str(error.value)
    assert "cannot reach MongoDB" in message and str(port) in message
    assert "hunter2" not in message and "someone:***@" in message
    assert "\n" not in message


def test_invalid_uri():
    with pytest.raises(StoreUnavailable, match="invalid MongoDB URI"):
        connect("mongodb://:::/", timeout_ms=500)


def test_embedded_refused_when_data_must_persist():
    with pytest.raises(StoreError, match="no MongoDB configured"):
        connect(None, require_persistent=True)


@pytest.mark.mongo
def test_wrong_credentials(mongo_server_uri):
    host = mongo_server_uri.split("://", 1)[1].split("@")[-1]
    with pytest.raises(StoreUnavailable) as error:
        connect(f"mongodb://nobody:wrong-password@{host}/x?authSource=admin", timeout_ms=2000)
    assert "authentication failed" in str(error.value)
    assert "wrong-password" not in str(error.value)
