"""The environment image (`az ml experiment prepare -c docker`): built once, reused, lean, non-root."""

import time

import pytest

from compute.engine import connect
from compute.envimage import check_image_ref, ensure_env_image, env_image_tag
from tests.compute.fixtures import BASE_IMAGE, SMALL_REQUIREMENTS, WHEEL_CACHE

pytestmark = pytest.mark.docker


def _in_image(tag: str, command: str) -> str:
    with connect() as client:
        return client.containers.run(tag, ["sh", "-c", command], remove=True,
                                     network_mode="none").decode()


def test_a_second_prepare_reuses_the_image_at_once(small_env):
    logs: list[str] = []
    started = time.monotonic()
    tag = ensure_env_image(base_image=BASE_IMAGE, requirements=SMALL_REQUIREMENTS,
                           wheel_cache=WHEEL_CACHE, log=logs.append)
    assert time.monotonic() - started < 3
    assert tag == small_env["tag"]
    assert logs == [f"environment image {tag} is ready (reused)"]


def test_the_tag_is_a_content_hash_of_the_environment(small_env):
    tag = env_image_tag(base_image=BASE_IMAGE, requirements=["six", "# comment", "Six"])
    assert tag == small_env["tag"]
    assert tag.startswith("mlportal-env:") and len(tag.split(":")[1]) == 16
    assert env_image_tag(base_image=BASE_IMAGE, requirements=["six==1.17.0"]) != tag


def test_the_image_holds_no_wheels_and_no_pip_cache(small_env):
    found = _in_image(small_env["tag"],
                      "find / -xdev \\( -name '*.whl' -o -path '*/.cache/pip' \\) "
                      "-not -path '/usr/share/python-wheels/*' -not -path '/proc/*' 2>/dev/null; "
                      "ls /tmp/mlportal-build 2>&1 || true")
    assert ".whl" not in found and ".cache/pip" not in found
    assert "No such file" in found


def test_it_runs_as_uid_1000_in_workspace_with_the_runtime_on_the_path(small_env):
    out = _in_image(small_env["tag"],
                    "id -u; pwd; python -c 'import six, mlportal_runtime, azureml; "
                    "print(mlportal_runtime.__file__)'; ls /opt/mlportal/lib/mlportal_runtime/__pycache__ | head -1; "
                    "echo $PYTHONUNBUFFERED; command -v python")
    uid, cwd, runtime, pyc, unbuffered, python = out.split()
    assert uid == "1000" and cwd == "/workspace"
    assert runtime == "/opt/mlportal/lib/mlportal_runtime/__init__.py"
    assert pyc.endswith(".pyc")
    assert unbuffered == "1" and python == "/opt/venv/bin/python"


def test_the_sklearn_environment_imports_its_libraries(sklearn_env):
    out = _in_image(sklearn_env["tag"], "python -c 'import sklearn, pandas, numpy; print(sklearn.__version__)'")
    assert out.strip()
    print(f"sklearn env image {sklearn_env['tag']} prepared in {sklearn_env['seconds']:.1f} s")


def test_user_text_never_reaches_the_dockerfile():
    for bad in ["python:3.11\nRUN rm -rf /", "python:3.11 AS x", "Python:latest", "a b"]:
        with pytest.raises(ValueError):
            check_image_ref(bad)
    assert check_image_ref("localhost:5000/team/python:3.11-slim")
