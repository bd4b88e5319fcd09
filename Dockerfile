# syntax=docker/dockerfile:1
# Images for respawn: `--target controller` and `--target trainer`.
FROM python:3.11.14-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --uid 65532 --create-home --shell /usr/sbin/nologin respawn
WORKDIR /app

FROM base AS controller
COPY pyproject.toml README.md ./
COPY controller/ controller/
COPY trainer_image/ trainer_image/
RUN pip install --no-deps . && pip install "kubernetes==37.0.2" "pyyaml==6.0.3" "watchdog==7.1.0" "prometheus-client==0.26.0"
USER 65532:65532
ENTRYPOINT ["python", "-m", "controller"]

FROM base AS trainer
COPY pyproject.toml README.md ./
COPY trainer_image/ trainer_image/
COPY controller/ controller/
RUN pip install ".[trainer]"
USER 65532:65532
ENTRYPOINT ["python", "-m", "trainer_image"]
