# infinitetalk-dist worker/head image: CUDA runtime + pinned Python deps + the package.
# Weights are NOT baked in: mount the official folder read-only at /weights (see k8s/).
# Build: docker build -t ghcr.io/infinitetalk-dist/infinitetalk-dist:0.1.0 .
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    RAY_USAGE_STATS_ENABLED=0

# wget: KubeRay's readiness/liveness probes call it inside the Ray containers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3-pip ca-certificates wget \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH

# torch for CUDA 13 first (pinned), then the package with the Ray extra, pinned by constraints.
RUN pip install --index-url https://download.pytorch.org/whl/cu130 torch==2.11.0
WORKDIR /app
COPY pyproject.toml README.md constraints-gpu.txt ./
COPY infinitetalk_dist ./infinitetalk_dist
RUN pip install -c constraints-gpu.txt '.[ray,hopper]'
# The launch scripts and the site/job config search path ($INFINITETALK_CONF) for mounted overrides.
COPY launch ./launch
COPY conf ./conf
ENV INFINITETALK_CONF=/app/conf

RUN useradd --create-home --uid 1000 --user-group app
USER 1000:1000
WORKDIR /home/app

EXPOSE 8265 6379 10001 9400
ENTRYPOINT []
CMD ["infinitetalk-dist", "--help"]
