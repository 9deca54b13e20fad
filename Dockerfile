# The analysis_wrapper image: the package and its runtime dependencies (pyproject.toml, no dev extras).
# By default it serves the code location over gRPC on port 4000. The same image runs the webserver, the
# daemon and every run on ECS (deploy/ecs/), and the user-code deployment and every run on Kubernetes
# (deploy/helm/values.yaml). Build it from the repository root, naming the commit it holds (the image has no
# .git, so GIT_COMMIT is what the records name as the code's commit):
#
#   docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t analysis-wrapper:"$(git rev-parse --short=12 HEAD)" .
#
# Build from a clean work tree: the records say the code is the commit GIT_COMMIT names.
FROM python:3.11-slim

ARG GIT_COMMIT=""
ENV PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    GIT_COMMIT=${GIT_COMMIT}

RUN groupadd --system --gid 10001 dagster \
    && useradd --system --uid 10001 --gid dagster --home-dir /opt/dagster/home --no-create-home dagster

# The install step of scripts/setup.sh's runtime branch, not editable (the sources are removed after it):
# pip resolves pyproject.toml's dependencies, the same pinned dagster set the tests run on.
WORKDIR /opt/dagster/src
COPY pyproject.toml README.md ./
COPY analysis_wrapper ./analysis_wrapper
RUN pip install --no-cache-dir --disable-pip-version-check . \
    && rm -rf /opt/dagster/src

# DocumentDB's CA bundle for DOCDB_TLS_CA_FILE=/etc/ssl/docdb/global-bundle.pem: whatever deploy/certs/ holds
# when the image is built (put global-bundle.pem there first, see deploy/certs/README.md), or mount the
# bundle over /etc/ssl/docdb at run time (the Helm values mount a ConfigMap there).
COPY deploy/certs/ /etc/ssl/docdb/

# Instance config and workspace of the ECS webserver and daemon (their task definitions set
# DAGSTER_HOME=/opt/dagster/ecs). On Kubernetes the chart writes and mounts its own instance config.
COPY deploy/ecs/dagster.yaml deploy/ecs/workspace.yaml /opt/dagster/ecs/

# Dagster may write under DAGSTER_HOME; the configs themselves stay root's, read-only to the process.
RUN mkdir -p /opt/dagster/dagster_home /opt/dagster/app /opt/dagster/home \
    && chown dagster:dagster /opt/dagster/dagster_home /opt/dagster/ecs /opt/dagster/app /opt/dagster/home

USER dagster
# The working folder: empty, so no settings.env or .env is read from it (settings come from the environment).
WORKDIR /opt/dagster/app
EXPOSE 4000
CMD ["dagster", "api", "grpc", "-m", "analysis_wrapper.definitions", "-h", "0.0.0.0", "-p", "4000"]
