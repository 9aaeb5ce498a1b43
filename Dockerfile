# admitd: gRPC admission control for LLM calls. Builds with BuildKit (Docker 23+ by default;
# DOCKER_BUILDKIT=1 on Docker 20.10):
#   docker build -t admitd .
#   docker run -p 50051:50051 -p 9464:9464 admitd                 # the embedded default setup
#   docker run -v "$PWD/conf:/etc/admitd/config:ro" ... admitd    # your conf/admitd.yaml, live
#
# Build arguments:
#   PYTHON_IMAGE          the base, in both stages: a Debian bookworm with Python 3.11, by
#                         default the pinned upstream image; without a registry,
#                         docker/base-images.sh builds one from Debian packages.
#   ADMITD_TIKTOKEN_SEED  offline builds: a folder in the build context (.dockerignore lets in
#                         .cache/tiktoken-seed) holding tiktoken's encoding files, read instead
#                         of downloading them (see docker/install.sh).
# Build secret (optional): ca-certificates, a CA bundle for pip and the download to trust,
# for networks that intercept TLS (--secret id=ca-certificates,src=FILE). It never reaches
# a layer.
#
# Python 3.11 (the lock's Python) on Debian bookworm (slim). Pinned by the digest of the
# multi-architecture index, so a rebuild starts from the same bits; refresh tag and digest
# together (docker buildx imagetools inspect python:3.11.14-slim-bookworm).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
# 1. The locked dependencies, a layer that only a new lock rebuilds. The pip cache lives in a
#    BuildKit cache, not in a layer.
COPY requirements/runtime.txt docker/install.sh /build/
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt \
    /build/install.sh deps /opt/admitd/venv /build/runtime.txt
# 2. admitd itself and tiktoken's o200k_base and cl100k_base (checked against tiktoken's pinned
#    sha256), so the image never needs the network. The context is an allow-list
#    (.dockerignore).
COPY . /src
# DL3064 flags any name containing TOKEN: this one names a folder of public files.
# hadolint ignore=DL3064
ARG ADMITD_TIKTOKEN_SEED=""
RUN --mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt \
    /build/install.sh app /opt/admitd/venv /opt/admitd/tiktoken /src

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="admitd" \
      org.opencontainers.image.description="gRPC admission control for LLM calls" \
      org.opencontainers.image.licenses="Apache-2.0"
# A named user for readable `ps` and file listings; USER below is numeric so Kubernetes'
# runAsNonRoot can verify it without reading /etc/passwd (the chart's runAsUser is the same).
RUN groupadd --system --gid 10001 admitd \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin admitd
COPY --from=build /opt/admitd /opt/admitd
COPY docker/admitd.yaml /etc/admitd/config/admitd.yaml
# Bytecode was compiled at install; the root filesystem may be read-only at run time.
# DL3064 flags any name containing TOKEN; TIKTOKEN_CACHE_DIR is the folder setting tiktoken
# documents (a path, not a secret).
# hadolint ignore=DL3064
ENV PATH=/opt/admitd/venv/bin:$PATH \
    TIKTOKEN_CACHE_DIR=/opt/admitd/tiktoken \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# 50051: gRPC (Admission, grpc.health.v1, reflection). 9464: Prometheus /metrics over HTTP.
EXPOSE 50051 9464
# For docker and compose; Kubernetes ignores it and uses the chart's gRPC probes. It checks
# the default listen address: change it together with `listen`.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["admitd", "health", "--target", "127.0.0.1:50051"]
# admitd runs as PID 1 and handles SIGTERM itself (drain, then stop), so no init is needed.
ENTRYPOINT ["admitd"]
CMD ["serve", "--config", "/etc/admitd/config/admitd.yaml"]
