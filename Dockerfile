# syntax=docker/dockerfile:1
# Images for respawn, one target each:
#   docker build --target controller -t respawn/controller:0.1.0 .
#   docker build --target trainer    -t respawn/trainer:0.1.0 .
#
# Layers from least to most often changed: the locked dependencies (requirements/, so editing the
# source never reinstalls them), then the source. Build tools and pip's work stay in the build
# stages; the images run as the non-root user 65532 (the chart's runAsUser), from /app on
# PYTHONPATH. Release builds pin the base image by digest:
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest of the tag when released>
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# -- a virtual environment per image, built outside the final image ------------------------------
# Only from the lock files: every package pinned with the hashes of its files (hack/lock.sh), so
# nothing floats and a tampered download fails the build.
FROM ${PYTHON_IMAGE} AS controller-venv
COPY requirements/controller.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes --no-deps -r /tmp/requirements.txt

FROM ${PYTHON_IMAGE} AS trainer-venv
COPY requirements/trainer.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes --no-deps -r /tmp/requirements.txt

# -- what both images share ---------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --gid 65532 respawn \
    && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/respawn \
        --shell /usr/sbin/nologin respawn
WORKDIR /app
LABEL org.opencontainers.image.vendor="respawn" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

# -- the controller: python -m controller -------------------------------------------------------
FROM runtime AS controller
LABEL org.opencontainers.image.title="respawn controller" \
      org.opencontainers.image.description="Restarts TrainingJobs from their last complete checkpoint"
COPY --from=controller-venv /opt/venv /opt/venv
# The protocol package is all the controller shares with the trainer: no trainer, no MindSpore.
COPY respawn_protocol/ respawn_protocol/
COPY controller/ controller/
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["python", "-m", "controller"]

# -- the trainer (MindSpore): python -m trainer_image --config FILE ------------------------------
FROM runtime AS trainer
LABEL org.opencontainers.image.title="respawn trainer" \
      org.opencontainers.image.description="MindSpore trainer that resumes exactly from its checkpoints"
# MindSpore's CPU kernels link OpenMP, which the slim base lacks. Pinned to bookworm's version:
# update it together with PYTHON_IMAGE.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.0-14+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=trainer-venv /opt/venv /opt/venv
COPY respawn_protocol/ respawn_protocol/
COPY trainer_image/ trainer_image/
USER 65532:65532
# MindSpore writes logs and compile caches under the working directory: the user's own.
WORKDIR /home/respawn
ENTRYPOINT ["python", "-m", "trainer_image"]
