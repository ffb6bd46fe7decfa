# The reproduction in one image: Python 3.11, every Python package from requirements.lock
# (hash-checked, the same file CI installs), the system tools the pipeline calls, and the
# `repro` command as entrypoint.
#
#   build:  make docker-build        (= docker build --tag repro:<version> .)
#   run:    make docker-reproduce PROFILE=fast      (docs/reviewing.md)
#
# CUDA: torch 2.9.1 from PyPI brings the CUDA 12.8 runtime, cuDNN 9 and NCCL as nvidia-* wheels
# (pinned with hashes in requirements.lock), so the base needs only Python. The host needs an
# NVIDIA driver and the NVIDIA Container Toolkit, which maps the driver in at `docker run --gpus all`.
#
# Base: the official Python image, Debian 12 (bookworm), linux/amd64 (the lock resolves wheels
# for x86_64 manylinux_2_28). Pinned by tag and digest; the tag says what the digest is.
FROM python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=unpublished
LABEL org.opencontainers.image.title="repro" \
      org.opencontainers.image.description="Reproducibility artifact for 'What Do Self-Supervised Speech and Speaker Models Learn? New Findings From a Cross Model Layer-Wise Analysis' (Ashihara et al., ICASSP 2024)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.15-slim-bookworm" \
      repro.paper.arxiv="2401.17632" \
      repro.paper.url="https://arxiv.org/abs/2401.17632"

# System packages, pinned to their Debian 12 versions (the synthetic corpus's voice, libespeak-ng,
# comes with the Python packages: espeakng-loader in requirements.lock):
#   sox        audio conversion (channels, sample rate) of user-supplied corpora, as the error messages suggest
#   ffmpeg     decodes VoxCeleb2's AAC (.m4a) audio for speaker-model training
#   make       the Make targets, the same inside the image as outside
# Debian replaces a version when a point or security release supersedes it. If a pin no longer
# resolves, build from the Debian archive as it was: --build-arg DEBIAN_SNAPSHOT=20261124T000000Z
# (any snapshot.debian.org timestamp at which these versions were current).
ARG DEBIAN_SNAPSHOT=
RUN set -eux; \
    if [ -n "${DEBIAN_SNAPSHOT}" ]; then \
      sed -i \
        -e "s|http://deb.debian.org/debian-security|http://snapshot.debian.org/archive/debian-security/${DEBIAN_SNAPSHOT}|" \
        -e "s|http://deb.debian.org/debian$|http://snapshot.debian.org/archive/debian/${DEBIAN_SNAPSHOT}|" \
        /etc/apt/sources.list.d/debian.sources; \
      echo 'Acquire::Check-Valid-Until "false";' > /etc/apt/apt.conf.d/99snapshot; \
    fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
      sox=14.4.2+git20190427-3.5 \
      ffmpeg=7:5.1.9-0+deb12u1 \
      make=4.3-4.1; \
    rm -rf /var/lib/apt/lists/*

# The account the image runs as. `make docker-*` runs it as the calling host user instead
# (docker run --user UID:GID), so files written to the mounted folders belong to that user.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash repro

# Python: the same layout as `make install` (a .venv beside the Makefile), so the Make targets
# run unchanged inside the image.
WORKDIR /opt/repro
ENV VIRTUAL_ENV=/opt/repro/.venv \
    PATH=/opt/repro/.venv/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY requirements.lock pyproject.toml ./
COPY docker/pip.lock docker/pip.lock
RUN python -m venv .venv \
 && .venv/bin/python -m pip install --require-hashes -r docker/pip.lock \
 && .venv/bin/python -m pip install --require-hashes -r requirements.lock

# The project itself: its dependencies are all in the lock, so nothing else is resolved here.
COPY . .
RUN .venv/bin/python -m pip install --no-deps --no-build-isolation . \
 && rm -rf build ./*.egg-info \
 && touch .venv/.installed

# Mounted folders (make docker-* mounts the host's; see scripts/docker.sh). The package reads
# REPRO_WORK, REPRO_RESULTS and REPRO_FIGURES (repro/workspace.py) and REPRO_DATA for corpora;
# the libraries read HF_HOME, TORCH_HOME and the XDG cache. Writable by any user, so that an
# unmounted run as an arbitrary UID works too. NVIDIA_DRIVER_CAPABILITIES tells the NVIDIA
# Container Toolkit to map CUDA (compute) and nvidia-smi (utility) in at `--gpus all`. Pinned CPU
# numerics (runtime.pinned_cpu_numerics) are set by `repro` / `python -m repro` itself, per profile.
ENV REPRO_DATA=/data \
    REPRO_WORK=/work \
    REPRO_RESULTS=/results \
    REPRO_FIGURES=/figures \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    XDG_CACHE_HOME=/cache \
    MPLCONFIGDIR=/cache/matplotlib \
    TRITON_CACHE_DIR=/cache/triton \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTEST_ADDOPTS="-p no:cacheprovider" \
    REPRO_IMAGE_VERSION=${VERSION} \
    REPRO_GIT_COMMIT=${REVISION}
RUN install -d -m 1777 /data /cache /work /results /figures
VOLUME ["/data", "/cache", "/work", "/results", "/figures"]

USER 1000:1000
ENTRYPOINT ["repro"]
CMD ["--help"]
