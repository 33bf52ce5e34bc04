"""The host's wheel cache: filled once with pip, then resolved offline to exactly the wheels needed."""

import pytest

from compute.wheels import RequirementsError, ensure_wheels, normalise_requirements

pytestmark = pytest.mark.docker  # part of the engine suite: it fills caches with the host's pip


def test_empty_requirements_need_no_wheels(tmp_path):
    assert ensure_wheels([], cache_dir=tmp_path, log=lambda line: None) == []
    assert ensure_wheels(["# only a comment", "  "], cache_dir=tmp_path, log=lambda line: None) == []


def test_it_fills_an_empty_cache_and_returns_only_the_wheels_needed(tmp_path):
    cache = tmp_path / "wheels"
    logs: list[str] = []
    wheels = ensure_wheels(["six"], cache_dir=cache, log=logs.append)
    assert [w.name.split("-")[0] for w in wheels] == ["six"]
    assert all(w.parent == cache.resolve() and w.suffix == ".whl" and w.exists() for w in wheels)
    assert any("filling the wheel cache" in line for line in logs)

    more = ensure_wheels(["requests"], cache_dir=cache, log=lambda line: None)
    names = {w.name.split("-")[0].lower() for w in more}
    assert {"requests", "idna", "urllib3", "certifi", "charset_normalizer"} <= names
    assert "six" not in names  # in the cache, but not needed by this set


def test_a_cache_that_has_everything_is_used_without_pip_wheel(tmp_path):
    ensure_wheels(["six"], cache_dir=tmp_path, log=lambda line: None)
    logs: list[str] = []
    again = ensure_wheels(["six"], cache_dir=tmp_path, log=logs.append)
    assert [w.name.split("-")[0] for w in again] == ["six"]
    assert not any("filling" in line for line in logs)


def test_it_refuses_pip_options_and_urls():
    for line in ["-r /etc/passwd", "--index-url http://example.org", "-e .", "x @ file:///etc"]:
        with pytest.raises(RequirementsError):
            normalise_requirements([line])


def test_requirements_are_normalised_regardless_of_order_case_and_duplicates():
    assert normalise_requirements(["Six", "numpy >= 1.0  # pinned", "six", ""]) == ["numpy>=1.0", "six"]
    assert normalise_requirements(["scikit_learn<2,>=1"]) == ["scikit-learn<2,>=1"]


def test_an_unknown_package_names_pips_error(tmp_path):
    with pytest.raises(RequirementsError) as caught:
        ensure_wheels(["mlportal-no-such-package-xyz==1.0"], cache_dir=tmp_path, log=lambda line: None)
    assert "mlportal-no-such-package-xyz" in str(caught.value)
    assert caught.value.step == "download requirements"
