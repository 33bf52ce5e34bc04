"""Keys read from files (Swarm secrets under /run/secrets) instead of the environment."""
from __future__ import annotations

from mlportal_runtime.server import _env_or_file


def test_a_keys_file_wins_over_the_variable_and_is_read_stripped(tmp_path):
    path = tmp_path / "mlportal-keys"
    path.write_text("k1,k2,k3\n")
    env = {"MLPORTAL_SERVICE_KEYS_FILE": str(path), "MLPORTAL_SERVICE_KEYS": "old"}
    assert _env_or_file(env, "MLPORTAL_SERVICE_KEYS") == "k1,k2,k3"


def test_without_a_file_the_variable_is_used():
    assert _env_or_file({"MLPORTAL_INTERNAL_KEY": "abc"}, "MLPORTAL_INTERNAL_KEY") == "abc"
    assert _env_or_file({}, "MLPORTAL_INTERNAL_KEY") == ""
