# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target trainer  -t pax-trainer .                  (CPU)
#   docker build --target trainer  --build-arg JAX_EXTRA=cuda13 .    (NVIDIA GPU, CUDA 13, driver >= 580)
#     CUDA 13 because the benchmarked H200 image is CUDA 13 (jax 0.11.2 cuda13 plugin, driver 580): the
#     cuda13 extra of our pinned jax brings its own CUDA/cuDNN wheels. Older drivers: JAX_EXTRA=cuda12.
#   docker build --target trainer  --build-arg JAX_EXTRA=tpu .       (Cloud TPU)
#   docker build --target operator -t pax-operator .
# Both run as a non-root user and satisfy the PodSecurity "restricted" profile.
# The install steps are the ones `make setup` runs (same pyproject pins, same constraints.txt for every
# transitive package), so CI exercises them.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS source
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY contract/ contract/
COPY trainer/ trainer/
COPY operator/ operator/
COPY hack/pax_cluster/__init__.py hack/pax_cluster/__init__.py
RUN python -m venv /opt/pax && /opt/pax/bin/pip install "pip==26.3"

FROM source AS trainer-deps
ARG JAX_EXTRA=""
RUN /opt/pax/bin/pip install -c constraints.txt ".[trainer]" \
 && if [ -n "${JAX_EXTRA}" ]; then /opt/pax/bin/pip install -c constraints.txt "jax[${JAX_EXTRA}]==0.12.0.1"; fi

FROM source AS operator-deps
RUN /opt/pax/bin/pip install -c constraints.txt ".[operator]"

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/pax/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
RUN groupadd --system --gid 65532 pax \
 && useradd --system --uid 65532 --gid pax --home-dir /home/pax --create-home pax
WORKDIR /home/pax

FROM runtime AS trainer
COPY --from=trainer-deps /opt/pax /opt/pax
USER 65532:65532
ENTRYPOINT ["python", "-m", "pax_trainer"]

FROM runtime AS operator
COPY --from=operator-deps /opt/pax /opt/pax
USER 65532:65532
ENTRYPOINT ["python", "-m", "pax_operator"]
