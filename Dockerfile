# syntax=docker/dockerfile:1.7
# clarus-pipelines image: one image for every service (Dagster webserver, daemon and code
# server, the webhook receiver, the dashboard, Kubernetes run pods). Built with uv from the
# committed uv.lock (`uv sync --locked`: the build fails rather than drift), without the
# development tools and without the `sandbox` extra (the look-alikes of Clarus, Shopify and
# NetSuite are for trials; the `sandbox` target below adds them).
#
#   docker build -t clarus-pipelines:0.1.0 .                      # production runtime
#   docker build --target sandbox -t clarus-pipelines-sandbox .   # + the sandbox look-alikes

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# ---- build: resolve and install into /opt/venv from the lockfile ---------------------------
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first (a layer that changes only with the lockfile), then the project itself.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project --python /usr/local/bin/python3
COPY . .
# --no-editable: the project goes into site-packages as from its wheel (no source tree at run time)
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --python /usr/local/bin/python3

FROM build AS build-sandbox
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --extra sandbox --python /usr/local/bin/python3

# ---- sandbox: the runtime plus the look-alikes (compose profile `sandbox`, trials only) -------
FROM ${PYTHON_IMAGE} AS sandbox
RUN groupadd --system --gid 10001 clarus \
 && useradd --system --uid 10001 --gid clarus --home-dir /home/clarus --create-home clarus \
 && mkdir -p /var/lib/clarus /opt/dagster/dagster_home && chown -R clarus:clarus /var/lib/clarus /opt/dagster
COPY --from=build-sandbox /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 CLARUS_PIPELINES_HOME=/var/lib/clarus DAGSTER_HOME=/opt/dagster/dagster_home
USER clarus
WORKDIR /var/lib/clarus
ENTRYPOINT []
CMD ["clarus-pipelines", "sandbox", "--host", "0.0.0.0"]

# ---- runtime (the default target): no compilers, no uv, no sandbox, a non-root user -----------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="clarus-pipelines" \
      org.opencontainers.image.description="Clarus WMS <-> Shopify <-> NetSuite integration: Dagster code, webhook receiver, dashboard" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 clarus \
 && useradd --system --uid 10001 --gid clarus --home-dir /home/clarus --create-home clarus \
 && mkdir -p /var/lib/clarus /opt/dagster/dagster_home && chown -R clarus:clarus /var/lib/clarus /opt/dagster
COPY --from=build /opt/venv /opt/venv
# The production instance config; DAGSTER_PG_URL comes from the environment (a Secret).
COPY deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml
COPY deploy/workspace.yaml /opt/dagster/workspace.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLARUS_PIPELINES_HOME=/var/lib/clarus \
    DAGSTER_HOME=/opt/dagster/dagster_home
USER clarus
WORKDIR /var/lib/clarus
EXPOSE 3000 4000 8700 8501
# The wheel's entry points: `clarus-pipelines <command>` and `dagster ...`; compose and the
# Kubernetes manifests give each service its command.
CMD ["clarus-pipelines", "--help"]
