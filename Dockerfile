# syntax=docker/dockerfile:1
# trailkeeper container image.
#   docker build -t trailkeeper .
#   docker run -p 8787:8787 -p 9464:9464 -v trailkeeper-data:/var/lib/trailkeeper trailkeeper
# Configuration: /etc/trailkeeper/trailkeeper.yaml (config/examples/container.yaml); mount your
# own file over it or pass `run --config /path`. Secrets come from the environment or mounted
# files at run time: nothing secret is baked into the image.

# Two builds of one commit give the same image: the base is pinned by digest (the multi-arch
# index of python:3.11-slim-bookworm; refresh it with
# `docker buildx imagetools inspect python:3.11-slim-bookworm`, its "Digest:" line, in both FROM
# lines), the Python dependencies come from requirements.lock and the build backend from
# requirements-build.lock, every file checked against its hash (deploy/relock.sh writes both),
# and Debian's tini is pinned to its bookworm version.

# --- build: install the package and its dependencies into a self-contained venv -------------
# Both stages use the same base so the venv's interpreter path matches.
FROM python:3.11-slim-bookworm@sha256:528257d48c1da0dcecc2e725d1ae34498d60c965f1241e39cd6a85a8859bdf84 AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Wheels only: a source build would fetch build tools that no hash covers.
COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/trailkeeper \
    && /opt/trailkeeper/bin/pip install --no-cache-dir --require-hashes --only-binary :all: -r requirements.lock \
    && python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --only-binary :all: -r requirements-build.lock
COPY pyproject.toml README.md ./
COPY daemon ./daemon
# The package itself: built with the locked backend (which stays in this stage), installed
# without dependencies (all came from the lock above).
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /tmp/wheel . \
    && /opt/trailkeeper/bin/pip install --no-cache-dir --no-deps /tmp/wheel/trailkeeper-*.whl \
    && /opt/trailkeeper/bin/python -m compileall -q /opt/trailkeeper/lib

# --- runtime: no compiler, no pip cache, no source tree --------------------------------------
FROM python:3.11-slim-bookworm@sha256:528257d48c1da0dcecc2e725d1ae34498d60c965f1241e39cd6a85a8859bdf84
LABEL org.opencontainers.image.title="trailkeeper" \
      org.opencontainers.image.description="Self-hosted audit-trail daemon" \
      org.opencontainers.image.licenses="Apache-2.0"

# tini runs as PID 1: it reaps every orphaned child (PID 1 inherits them, and the kernel ignores
# signals PID 1 has no handler for) and forwards SIGTERM and SIGHUP to the daemon, its only
# child. Without -g: the signal goes to the daemon alone, which stops its decode workers itself
# once it has drained; a signal to the whole group would kill them mid-batch.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid so volume ownership and runAsUser in Kubernetes agree.
ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" trailkeeper \
    && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home \
       --home-dir /var/lib/trailkeeper --shell /usr/sbin/nologin trailkeeper \
    && install -d -o "${UID}" -g "${GID}" -m 0750 /var/lib/trailkeeper

COPY --from=build /opt/trailkeeper /opt/trailkeeper
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

# Exec form, under tini: the daemon receives SIGTERM (graceful drain) and SIGHUP (reload).
ENTRYPOINT ["/usr/bin/tini", "--", "trailkeeper"]
CMD ["run", "--config", "/etc/trailkeeper/trailkeeper.yaml"]
