import pytest

from flows.config import load_config, mask_uri
from pipeline.errors import ConfigError


def test_mask_uri_hides_password_only():
    assert mask_uri("mongodb://alice:s3cret@db.example:27017/sp?authSource=admin") == (
        "mongodb://alice:***@db.example:27017/sp?authSource=admin"
    )
    assert mask_uri("mongodb://db:27017") == "mongodb://db:27017"
    assert mask_uri(None) == "embedded"


def test_file_then_environment(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("database: fromfile\ndb_timeout_ms: 1234\n")
    monkeypatch.setenv("SELFPLAY_DATABASE", "fromenv")
    config = load_config(path)
    assert config.database == "fromenv"  # environment wins over the file
    assert config.db_timeout_ms == 1234


def test_uri_is_secret(monkeypatch):
    monkeypatch.setenv("SELFPLAY_MONGODB_URI", "mongodb://u:topsecret@h/db")
    config = load_config()
    assert config.uri() == "mongodb://u:topsecret@h/db"
    assert "topsecret" not in repr(config)
    assert "topsecret" not in str(config.public_dict())


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("bogus_field: 1\n", "field 'bogus_field': unknown field"),
        ("db_timeout_ms: -5\n", "field 'db_timeout_ms'"),
        ("mongodb_uri: http://x:pw@h\n", "field 'mongodb_uri'"),
        ("database: [unclosed\n", "not valid YAML"),
        ("- a list\n", "must hold a mapping"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert fragment in message and "\n" not in message
    assert "pw" not in message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_validation_message_shows_the_value_and_counts_the_rest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("db_timeout_ms: -5\nbogus_field: 1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"config {path}: field '")
    assert "; and 1 more problem" in message and "problems" not in message
    path.write_text("db_timeout_ms: -5\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "(got -5)" in str(error.value)
