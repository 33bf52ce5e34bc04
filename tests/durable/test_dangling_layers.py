"""The daily retention prunes the dangling images the portal's own builds leave, and nobody else's.

The legacy builder puts a build's labels on its final image only: the environment image's build
stage (the venv, left untagged) and the step images of a failed service build carried no
`mlportal.portal` label, so the label-filtered prune never saw them and they piled up (hundreds of
MB each). Every image a portal build makes is labelled now, from a build argument."""
from __future__ import annotations

import io
import re
import tarfile
import uuid

import pytest

from compute.engine import LABEL_PORTAL, BuildError, connect

pytestmark = [pytest.mark.docker, pytest.mark.django_db]

STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12})$")  # the legacy builder's line naming a step's image


def _dangling() -> set[str]:
    with connect() as client:
        return {i["Id"] for i in client.api.images(filters={"dangling": True})}


def _unlabelled_leftover(base: str) -> str:
    """Someone else's two-stage build: its first stage is left dangling, with no label; returns its id."""
    dockerfile = f"FROM {base} AS first\nRUN echo {uuid.uuid4().hex} > /a\nFROM {base}\nCOPY --from=first /a /a\n".encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    before = _dangling()
    with connect() as client:
        tag = f"other-team-leftover:{uuid.uuid4().hex[:8]}"
        for _ in client.api.build(fileobj=context, custom_context=True, tag=tag, rm=True, decode=True):
            pass
        client.images.remove(tag)
    (made,) = _dangling() - before
    return made


def test_the_portals_build_leftovers_are_pruned_and_an_unlabelled_one_stays(settings, monkeypatch):
    from compute import envimage
    from compute.images import build_service_image
    from retention.worker import retention_apply
    from workspaces.instance import portal_instance

    suffix = uuid.uuid4().hex[:10]
    env_tag, service_tag = f"mlportal-env:dangle{suffix}", f"mlportal/dangle-test:{suffix}"
    # A tag of its own, so this test builds its environment image (and its build stage) afresh.
    monkeypatch.setattr(envimage, "env_image_tag", lambda **_: env_tag)
    foreign = _unlabelled_leftover(settings.MLPORTAL_BASE_IMAGE)
    left: set[str] = set()
    made: set[str] = set()  # the images these builds made: the engine is shared, others build meanwhile

    def log(line: str) -> None:
        if step := STEP_IMAGE.match(line):
            made.add(step.group(1))

    try:
        envimage.ensure_env_image(base_image=settings.MLPORTAL_BASE_IMAGE, requirements=[], log=log,
                                  wheel_cache=settings.MLPORTAL_WHEEL_CACHE, portal=portal_instance())
        with pytest.raises(BuildError, match="compileall"):  # a failed build leaves its COPY step's image
            build_service_image(tag=service_tag, env_image=env_tag, app_files={"score.py": b"def run(:\n"},
                                labels={LABEL_PORTAL: portal_instance()}, log=log)
        left = {i for i in _dangling() if i.removeprefix("sha256:")[:12] in made}
        assert len(left) >= 2, (left, made)  # the build stage's venv image and the failed step's image

        summary = retention_apply()
        assert summary["layers"] >= 2 and summary["layer_bytes"] > 0, summary
        after = _dangling()
        assert not left & after  # the portal's own leftovers are gone from the engine
        assert foreign in after  # an unlabelled dangling image is never pruned
    finally:
        with connect() as client:
            for ref in (env_tag, foreign, *left):
                try:
                    client.images.remove(ref)
                except Exception:  # noqa: BLE001 - already gone
                    pass
