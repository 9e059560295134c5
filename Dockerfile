# InferenceServer, CPU image.  Build: docker build -t inferenceserver:cpu .
# For NVIDIA GPUs use Dockerfile.cuda.

# Stage 1: the C hot paths (scripts/build_native.py), compiled where gcc is, so the
# image runs them without carrying a compiler. The official image has Python.h.
FROM python:3.11-slim-bookworm AS native
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/build_native.py scripts/
COPY factory/_fastcodec.c factory/
COPY netlib/_fastudp.c netlib/
COPY commonlib/models/_lstmkernel.c commonlib/models/
# --require: a module that does not build fails the image instead of leaving it pure
# Python. Only the built modules stay, for the next stage to copy over the sources.
RUN python scripts/build_native.py --require \
 && rm -r scripts factory/*.c netlib/*.c commonlib/models/*.c

# Stage 2: what runs.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements-runtime.txt .
# The CPU build of torch (the default PyPI wheel carries CUDA, several GB).
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements-runtime.txt

# Only what runs: the packages, the config and the trained checkpoint.
COPY aiServer/ aiServer/
COPY commonlib/ commonlib/
COPY factory/ factory/
COPY netlib/ netlib/
COPY util/ util/
COPY config/ config/
COPY models/ models/
COPY --from=native /src/ ./

RUN useradd --system --uid 10001 --no-create-home inference
USER 10001

# 7600: game clients (length-prefixed protobuf over TCP); 9100: /healthz /readyz /metrics.
# UDP broadcasts go out from an ephemeral port; nothing listens for UDP.
EXPOSE 7600/tcp 9100/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "aiServer"]
CMD ["--config", "config/container.yaml"]
