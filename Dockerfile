# syntax=docker/dockerfile:1
# trailkeeper container image.
#   docker build -t trailkeeper .
#   docker run -p 8787:8787 -p 9464:9464 -v trailkeeper-data:/var/lib/trailkeeper trailkeeper
# Configuration: /etc/trailkeeper/trailkeeper.yaml (config/examples/container.yaml); mount your
# own file over it or pass `run --config /path`. Secrets come from the environment or mounted
# files at run time: nothing secret is baked into the image.

# --- build: install the package and its dependencies into a self-contained venv -------------
# Both stages use the same base so the venv's interpreter path matches.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/trailkeeper
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN /opt/trailkeeper/bin/pip install --no-cache-dir . \
    && /opt/trailkeeper/bin/python -m compileall -q /opt/trailkeeper/lib

# --- runtime: no compiler, no pip cache, no source tree --------------------------------------
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="trailkeeper" \
      org.opencontainers.image.description="Self-hosted audit-trail daemon" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid so volume ownership and runAsUser in Kubernetes agree.
ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" trailkeeper \
    && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home \
       --home-dir /var/lib/trailkeeper --shell /usr/sbin/nologin trailkeeper \
    && install -d -o "${UID}" -g "${GID}" -m 0750 /var/lib/trailkeeper

COPY --from=build /opt/trailkeeper /opt/trailkeeper
COPY config/trailkeeper.yaml /etc/trailkeeper/trailkeeper.default.yaml
COPY config/examples/container.yaml /etc/trailkeeper/trailkeeper.yaml

ENV PATH=/opt/trailkeeper/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TRAILKEEPER_DATA_DIR=/var/lib/trailkeeper \
    TRAILKEEPER_HEALTH_URL=http://127.0.0.1:8787/healthz

# The journal (acknowledged events not yet archived) and the local archive live here: losing
# this volume loses acknowledged events, so it must be persistent.
VOLUME ["/var/lib/trailkeeper"]
WORKDIR /var/lib/trailkeeper
USER 10001:10001
EXPOSE 8787 9464

# Python's urllib, so the image needs no curl; urlopen raises on any non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['TRAILKEEPER_HEALTH_URL'], timeout=4)"]

# Exec form: the daemon is PID 1 and receives SIGTERM (graceful drain) and SIGHUP (reload).
ENTRYPOINT ["trailkeeper"]
CMD ["run", "--config", "/etc/trailkeeper/trailkeeper.yaml"]
