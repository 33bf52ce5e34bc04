# The portal's own image (web and worker), for the team configuration in docker-compose.yml.
FROM node:20-slim AS assets
WORKDIR /src
COPY package.json ./
RUN npm install --no-audit --no-fund

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MLPORTAL_DATA_DIR=/data
RUN apt-get update && apt-get install -y --no-install-recommends debootstrap \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 mlportal
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mlportal ./mlportal
COPY workspaces ./workspaces
COPY runs ./runs
COPY registry ./registry
COPY deployments ./deployments
COPY gateway ./gateway
COPY compute ./compute
COPY mlportal_runtime ./mlportal_runtime
COPY mlportal_cli ./mlportal_cli
COPY azureml ./azureml
COPY templates ./templates
COPY static ./static
COPY manage.py ./
COPY --from=assets /src/node_modules ./node_modules
RUN pip install --no-cache-dir . && python -m compileall -q /app
RUN mkdir -p /data && chown mlportal /data
USER mlportal
EXPOSE 8000
# The ASGI server: the scoring gateway in front of Django (mlportal/asgi.py); see scripts/run_portal.py.
ENV WEB_WORKERS=3 PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
CMD ["sh", "-c", "rm -rf $PROMETHEUS_MULTIPROC_DIR && mkdir -p $PROMETHEUS_MULTIPROC_DIR && exec uvicorn mlportal.asgi:application --host 0.0.0.0 --port 8000 --workers $WEB_WORKERS --loop uvloop --http httptools --lifespan on --timeout-keep-alive 30 --no-server-header"]
