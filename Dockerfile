# One image for the Ray head, the Ray workers and one-off dcgan commands, so that Python,
# Ray and the project match on every node (docs/deployment.md).
#
#   docker build -t dcgan:cpu .                          # CPU-only torch (small)
#   docker build -t dcgan:cuda --build-arg VARIANT=cuda .  # CUDA torch (needs the NVIDIA
#                                                          # container toolkit at run time)
#   docker run --rm -v mnist:/data -v runs:/storage dcgan:cpu train --out /storage/runs/a

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment with the dependencies, then the project ----------------
FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
# The dependency layer: rebuilt only when pyproject.toml changes. CPU images take torch from
# PyTorch's CPU index (no CUDA libraries); CUDA images take PyPI's CUDA builds.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && if [ "$VARIANT" = "cpu" ]; then \
         pip install --index-url https://download.pytorch.org/whl/cpu \
             "$(grep '^torch==' requirements.txt)" "$(grep '^torchvision==' requirements.txt)"; \
       elif [ "$VARIANT" != "cuda" ]; then \
         echo "VARIANT must be cpu or cuda (got $VARIANT)" >&2; exit 1; \
       fi \
    && pip install -r requirements.txt
COPY README.md ./
COPY dcgan ./dcgan
COPY cluster ./cluster
COPY tune ./tune
COPY benchmarks ./benchmarks
RUN pip install --no-deps . && dcgan --help > /dev/null

# -- runtime: the environment, the configs, a non-root user --------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="dcgan" \
      org.opencontainers.image.description="DCGAN training service for MNIST (local, Ray Train, Ray Tune)" \
      dcgan.variant="${VARIANT}"
RUN useradd --create-home --uid 1000 --shell /bin/bash dcgan \
    && mkdir -p /data /storage /tmp/ray \
    && chown dcgan:dcgan /data /storage /tmp/ray
COPY --from=build /opt/venv /opt/venv
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
