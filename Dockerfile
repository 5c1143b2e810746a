# One image for the Ray head, the Ray workers and one-off dcgan commands, so that Python,
# Ray and the project match on every node (docs/deployment.md).
#
#   make image                                             # dcgan:cpu, Docker or podman
#   make image VARIANT=cuda                                # dcgan:cuda
#   docker build -t dcgan:cpu .                            # CPU-only torch (small)
#   docker build -t dcgan:cuda --build-arg VARIANT=cuda .  # CUDA torch (needs the NVIDIA
#                                                          # container toolkit at run time)
#   docker run --rm -v mnist:/data -v runs:/storage dcgan:cpu train --out /storage/runs/a
#
# Build arguments:
#   PYTHON_IMAGE     the base of every stage: Debian bookworm with Python 3.11 at `python`
#                    (default python:3.11-slim-bookworm; cluster/image/base.sh makes one with
#                    debootstrap where no registry is reachable)
#   VARIANT          cpu (default) or cuda
#   TORCH_INDEX_URL  where torch and torchvision come from: a pip index URL, or "pypi" for
#                    the default index. Default: PyTorch's CPU index for cpu, PyPI for cuda.
#   PIP_CONFIG_FILE  a pip config file that a build mounts (podman build --volume), e.g. for
#                    a local wheel mirror or a CA bundle (cluster/image/build.sh). Unset:
#                    pip's defaults. Nothing of it is copied into the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- reqs: the dependency list from pyproject.toml. The deps stage copies only this file, so
#    editing anything else in pyproject.toml keeps the (large) dependency layer cached. ------
FROM ${PYTHON_IMAGE} AS reqs
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt

# -- deps: a virtual environment with the dependencies (rebuilt only when the dependency list
#    or a build argument changes) ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS deps
ARG VARIANT=cpu
ARG TORCH_INDEX_URL=""
ARG PIP_CONFIG_FILE
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY --from=reqs /src/requirements.txt ./
RUN case "$VARIANT" in \
         cpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
         cuda) index="${TORCH_INDEX_URL:-pypi}" ;; \
         *) echo "VARIANT must be cpu or cuda (got $VARIANT)" >&2; exit 1 ;; \
       esac \
    && if [ "$index" != "pypi" ]; then \
         pip install --index-url "$index" \
             "$(grep '^torch==' requirements.txt)" "$(grep '^torchvision==' requirements.txt)"; \
       fi \
    && pip install -r requirements.txt \
    && python -c "import torch, torchvision, ray; print('torch', torch.__version__, 'ray', ray.__version__)"

# -- build: the project as a wheel (rebuilt when the source changes) --------------------------
FROM deps AS build
ARG PIP_CONFIG_FILE
COPY pyproject.toml README.md ./
COPY dcgan ./dcgan
COPY cluster ./cluster
COPY tune ./tune
COPY benchmarks ./benchmarks
RUN pip wheel --no-deps --wheel-dir /wheels .

# -- runtime: the environment, the project, the configs, a non-root user ----------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="dcgan" \
      org.opencontainers.image.description="DCGAN training service for MNIST (local, Ray Train, Ray Tune)" \
      dcgan.variant="${VARIANT}"
# wget: KubeRay's default liveness and readiness probes run `wget ... | grep success` (its
# version is the base's Debian release's, security updates included, hence not pinned).
# profile.d: KubeRay starts Ray with `bash -lc`, and Debian's /etc/profile resets PATH.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && useradd --create-home --uid 1000 --shell /bin/bash dcgan \
    && mkdir -p /data /storage /tmp/ray \
    && chown dcgan:dcgan /data /storage /tmp/ray \
    && echo "export PATH=/opt/venv/bin:\$PATH" > /etc/profile.d/dcgan-venv.sh
# The dependency layer, then the project on top: a source change rebuilds only the latter.
# (The wheel is copied, not bind-mounted: buildah 1.28 loses `RUN --mount=from=` of a
# cached stage. It costs a 2.5 MB layer.)
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /wheels /tmp/wheels
RUN /opt/venv/bin/pip install --no-deps --no-index --no-cache-dir --disable-pip-version-check \
        /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && /opt/venv/bin/dcgan --help > /dev/null
WORKDIR /app
COPY --chown=dcgan:dcgan configs ./configs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DCGAN_DATA_DIR=/data
USER 1000:1000
# MNIST lives in /data (a volume; torchvision downloads it there when the container has
# internet); runs, checkpoints and Ray's storage_path in /storage (shared between nodes).
VOLUME ["/data", "/storage"]
# Ray GCS, dashboard/Jobs API, client, node metrics; the dcgan metrics endpoint.
EXPOSE 6379 8265 10001 8080 9100
ENTRYPOINT ["dcgan"]
CMD ["--help"]
