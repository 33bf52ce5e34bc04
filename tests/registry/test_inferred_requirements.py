"""The image's requirements when the manifest lists none: the packages its model files and score.py
import, read from the pickle's opcodes and score.py's import statements (nothing is unpickled or
run), scikit-learn pinned to the version the model was pickled with. The lab's
`service create realtime … -r python -s service_schema.json` passes no requirements file."""
from __future__ import annotations

import io
import pickle

import pytest
import sklearn

from registry import inference, worker
from registry.models import Manifest

pytestmark = pytest.mark.django_db


@pytest.fixture
def churn_model(trained_churn) -> bytes:
    return (trained_churn["app"] / "model.pkl").read_bytes()


def make_manifest(api, register_model, create_manifest, *, model: bytes, score: bytes | None = None, requirements=None):
    assert register_model(api, content=model).status_code == 201
    fields = {"requirements": requirements}
    if score is not None:
        fields["score"] = score
    response = create_manifest(api, **fields)
    assert response.status_code == 201, response.content
    return Manifest.objects.get(pk=response.json()["id"])


def test_a_manifest_without_requirements_builds_with_what_the_model_and_score_import(
    owner_api, register_model, create_manifest, churn_model
):
    manifest = make_manifest(owner_api, register_model, create_manifest, model=churn_model)
    assert manifest.requirements == []
    heard: list[str] = []
    reqs = worker.image_build_requirements(manifest, log=heard.append)
    assert f"scikit-learn=={sklearn.__version__}" in reqs  # the version recorded in model.pkl
    assert "pandas" in reqs and "numpy" in reqs
    assert len(reqs) == len(set(reqs))
    assert any(line == f"adding requirement scikit-learn=={sklearn.__version__}: imported by model.pkl" for line in heard), heard


def test_listed_requirements_win_and_nothing_is_added_twice(owner_api, register_model, create_manifest, churn_model):
    manifest = make_manifest(owner_api, register_model, create_manifest, model=churn_model,
                             requirements=b"scikit-learn>=1.5\npandas>=2.2\nnumpy>=1.26\n")
    assert sorted(worker.image_build_requirements(manifest)) == ["numpy>=1.26", "pandas>=2.2", "scikit-learn>=1.5"]


def test_a_requirements_file_is_taken_as_complete_apart_from_the_schemas_needs(owner_api, register_model, create_manifest, churn_model):
    # The author chose: nothing is inferred (scikit-learn is not added), only what the server needs.
    manifest = make_manifest(owner_api, register_model, create_manifest, model=churn_model, requirements=b"joblib\n")
    assert worker.image_build_requirements(manifest) == ["joblib", "pandas", "numpy"]


def test_score_imports_count_and_unknown_modules_are_reported_not_guessed(owner_api, register_model, create_manifest):
    score = (b"import json\nimport helpers\nfrom joblib import load\nfrom . import nothing\nimport compute\n"
             b"from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import scipy\n"
             b"try:\n    import threadpoolctl\nexcept ImportError:\n    threadpoolctl = None\n"
             b"def init():\n    import not_a_real_package_xyz\n\ndef run(input_df):\n    return json.dumps(0)\n")
    model = pickle.dumps({"weights": [1, 2, 3]})
    manifest = make_manifest(owner_api, register_model, create_manifest, model=model, score=score)
    heard: list[str] = []
    reqs = worker.image_build_requirements(manifest, log=heard.append)
    assert "joblib" in reqs  # imported by score.py
    assert not any(r.startswith(("json", "helpers", "not-a-real", "mlportal", "scipy", "threadpoolctl")) for r in reqs), reqs
    warnings = [line for line in heard if line.startswith("warning:")]
    assert any("'not_a_real_package_xyz'" in line and "score.py" in line for line in warnings), heard
    assert any("'helpers'" in line for line in warnings), heard
    # A module of the portal's own package is never fetched from an index under its name.
    assert any("'compute'" in line for line in warnings), heard


def test_imported_requirements_never_unpickles(tmp_path, settings):
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = pickle.dumps([Boom(), __import__("sklearn.tree").tree.DecisionTreeClassifier()])
    found, _ = inference.imported_requirements(models=[("boom.pkl", opener(data))], score=b"def run(x):\n    return x\n")
    assert [req.split("==")[0] for req, _ in found] == ["scikit-learn"]
    assert found[0] == (f"scikit-learn=={sklearn.__version__}", "boom.pkl")
    assert not marker.exists()


def opener(data: bytes):
    """A model file for the pure analysis: a callable opening it for binary reading."""
    return lambda: io.BytesIO(data)


def test_a_joblib_model_is_read_past_its_arrays_so_scikit_learn_is_pinned(tmp_path):
    joblib = pytest.importorskip("joblib")
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier

    path = tmp_path / "model.joblib"
    joblib.dump(DecisionTreeClassifier().fit(np.arange(40).reshape(20, 2), [0, 1] * 10), path)
    found, warnings = inference.imported_requirements(models=[("model.joblib", opener(path.read_bytes()))],
                                                      score=b"def run(x):\n    return x\n")
    import sklearn

    # The version is recorded after the tree's arrays: the scan steps over them as joblib.load does.
    assert (f"scikit-learn=={sklearn.__version__}", "model.joblib") in found
    assert not any("read only up to" in w for w in warnings), warnings


def test_a_recorded_version_that_is_not_a_release_installs_unpinned_and_says_so():
    data = pickle.dumps({"_sklearn_version": "1.5.0+local build", "cls": __import__("sklearn.tree").tree.DecisionTreeClassifier})
    found, warnings = inference.imported_requirements(models=[("m.pkl", opener(data))], score=b"")
    assert ("scikit-learn", "m.pkl") in found
    assert any("not a release number" in w for w in warnings), warnings


def test_the_inference_module_imports_no_django():
    """The analysis is pure code: importing it in a fresh interpreter loads no Django module."""
    import subprocess
    import sys

    probe = "import sys, registry.inference; print(any(m == 'django' or m.startswith('django.') for m in sys.modules))"
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False", out.stderr
