"""Credentials: environment first, then a 0600 file; never printed."""

import os

import pytest
import yaml

from kiln.core.errors import KilnError
from kiln.core.secrets import MASK, MissingCredential, Secret, lookup


def secrets_file(tmp_path, mode=0o600):
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump({"bmc": {"username": "admin", "password": "from-file"}}))
    os.chmod(path, mode)
    return path


def test_environment_wins_over_file(tmp_path):
    env = {"KILN_BMC_PASSWORD": "from-env"}
    found = lookup("bmc", ("username", "password"), env=env, secrets_file=secrets_file(tmp_path))
    assert found["password"].reveal() == "from-env"
    assert found["username"].reveal() == "admin"


def test_per_node_entry_reads_its_own_variables():
    env = {"KILN_BMC_GPU_017_USERNAME": "u", "KILN_BMC_GPU_017_PASSWORD": "p"}
    found = lookup("bmc-gpu-017", ("username", "password"), env=env)
    assert found["username"].reveal() == "u"


def test_world_readable_file_is_refused(tmp_path):
    path = secrets_file(tmp_path, mode=0o644)
    with pytest.raises(KilnError, match="must be 0600"):
        lookup("bmc", ("username",), env={}, secrets_file=path)


def test_missing_credential_names_where_it_looked_not_values(tmp_path):
    with pytest.raises(MissingCredential) as info:
        lookup("maas", ("api_key",), env={"KILN_BMC_PASSWORD": "s3cret"},
               secrets_file=secrets_file(tmp_path))
    message = str(info.value)
    assert "KILN_MAAS_API_KEY" in message and "secrets.yaml" in message
    assert "s3cret" not in message and "from-file" not in message


def test_missing_secrets_file_is_named(tmp_path):
    with pytest.raises(KilnError, match="does not exist"):
        lookup("ufm", ("password",), env={}, secrets_file=tmp_path / "absent.yaml")


def test_secret_never_prints_itself():
    secret = Secret("hunter2")
    assert "hunter2" not in str(secret) and "hunter2" not in repr(secret)
    assert MASK in f"{secret}" and "hunter2" not in f"{[secret]}"
