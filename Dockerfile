# The portal's own image (web and worker): the team configuration in docker-compose.yml, and workers
# on other hosts (README "Workers on several hosts"). Nothing is pulled but the base image:
# - the front-end libraries come from the build context's node_modules/ (`npm install`, which
#   `make install` runs), so run that before `docker build` / `docker compose build`;
# - Python packages come from PyPI, or with `--build-arg PIP_NO_INDEX=1` only from the wheels in
#   docker/wheels/ (see its README), for a host whose builds cannot reach a package index.
# The base image may be the official python slim image or a Debian one `make base-image` made
# offline: the portal lives in a virtualenv, which works on both (Debian's own Python is
# "externally managed").
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PIP_NO_INDEX=
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MLPORTAL_DATA_DIR=/data VIRTUAL_ENV=/opt/mlportal \
    PATH=/opt/mlportal/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update && apt-get install -y --no-install-recommends debootstrap \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 mlportal
WORKDIR /app
COPY pyproject.toml README.md ./
COPY docker/wheels/ /tmp/wheels/
# The dependencies in a layer of their own, before the code: a change to the portal reuses it.
RUN python3 -m venv /opt/mlportal \
    && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && printf 'setuptools>=68\nwheel\n' >> /tmp/requirements.txt \
    && pip install --no-cache-dir --disable-pip-version-check --find-links /tmp/wheels -r /tmp/requirements.txt \
    && rm -rf /tmp/wheels /tmp/requirements.txt
COPY mlportal ./mlportal
COPY core ./core
COPY workspaces ./workspaces
COPY runs ./runs
COPY registry ./registry
COPY deployments ./deployments
COPY gateway ./gateway
COPY monitoring ./monitoring
COPY retention ./retention
COPY pipelines ./pipelines
COPY compute ./compute
COPY mlportal_runtime ./mlportal_runtime
COPY mlportal_cli ./mlportal_cli
COPY azureml ./azureml
COPY templates ./templates
COPY static ./static
COPY manage.py ./
COPY node_modules/chart.js/dist ./node_modules/chart.js/dist
# Editable: the code stays in /app (settings find templates/ and static/ beside it); installs `mlportal`.
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation -e . \
    && python -m compileall -q /app \
    && mkdir -p /data && chown mlportal /data
USER mlportal
EXPOSE 8000
# The ASGI server: the scoring gateway in front of Django (mlportal/asgi.py); see scripts/run_portal.py.
ENV WEB_WORKERS=3 PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
CMD ["sh", "-c", "rm -rf $PROMETHEUS_MULTIPROC_DIR && mkdir -p $PROMETHEUS_MULTIPROC_DIR && exec uvicorn mlportal.asgi:application --host 0.0.0.0 --port 8000 --workers $WEB_WORKERS --loop uvloop --http gateway.server:GatewayHttpProtocol --lifespan on --timeout-keep-alive 30 --no-server-header"]
