#!/usr/bin/env bash
# Build and run the project's Docker image (the Make targets docker-build and docker-% call this).
#
#   scripts/docker.sh build                      build the image from ./Dockerfile
#   scripts/docker.sh make TARGET [VAR=VALUE...] run `make TARGET` inside the image
#   scripts/docker.sh run [ARGS...]              run `repro ARGS` inside the image
#
# The container runs as the calling user (--user UID:GID), gets every GPU (--gpus all) only
# where `nvidia-smi` finds one, and mounts five host folders:
#
#   host folder (variable, default)       container   holds
#   REPRO_DATA     ./data                 /data       corpora (downloaded or user-supplied)
#   REPRO_CACHE    ./cache                /cache      Hugging Face and torch downloads
#   REPRO_WORK     ./work                 /work       corpus manifests, models, feature cache
#   REPRO_RESULTS  ./results              /results    result files
#   REPRO_FIGURES  ./paper_figures        /figures    figures, tables, reports
#
# Other settings: IMAGE (default repro:<version in pyproject.toml>), REPRO_DOCKER_GPUS
# (auto | none | a --gpus value such as all or device=0), REPRO_DOCKER_SHM (shared memory for
# data-loader workers, default 16g), DEBIAN_SNAPSHOT (build from snapshot.debian.org).
# Whatever is missing (docker, its engine, the image) is reported in one line, exit status 2.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
  echo "error: $*" >&2
  exit 2
}

project_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml"
}

image="${IMAGE:-repro:$(project_version)}"

require_engine() {  # require_engine WHAT [HOW TO DO IT WITHOUT DOCKER]
  local what="$1" without="${2:+, or without Docker: $2}" out
  command -v docker >/dev/null 2>&1 ||
    die "'$what' needs Docker, and no 'docker' command is installed; install Docker Engine (https://docs.docker.com/engine/install/)$without"
  if ! out="$(docker version --format '{{.Server.Version}}' 2>&1)"; then
    out="$(printf '%s\n' "$out" | sed -n '/[^[:space:]]/h; ${x;p;}')"
    die "'$what' needs a running Docker engine, and none is reachable (docker says: ${out:-no answer}); start it (e.g. sudo systemctl start docker) or check DOCKER_HOST and your access to the docker socket$without"
  fi
}

require_image() {
  docker image inspect "$image" >/dev/null 2>&1 ||
    die "the image $image is not built; build it with: make docker-build"
}

host_folder() {  # host_folder VALUE: create the folder and print its absolute path
  mkdir -p "$1" || die "cannot create the folder $1 to mount into the container"
  (cd "$1" && pwd)
}

gpu_args=()
choose_gpus() {
  case "${REPRO_DOCKER_GPUS:-auto}" in
    auto)
      if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        gpu_args=(--gpus all)
      else
        echo "note: no NVIDIA GPU found by nvidia-smi; the container runs on the CPU" >&2
      fi ;;
    none) ;;
    *) gpu_args=(--gpus "$REPRO_DOCKER_GPUS") ;;
  esac
}

run_container() {  # run_container ENTRYPOINT ARGS...
  local entrypoint="$1"
  shift
  require_image
  choose_gpus
  local data cache work results figures
  data="$(host_folder "${REPRO_DATA:-$root/data}")"
  cache="$(host_folder "${REPRO_CACHE:-$root/cache}")"
  work="$(host_folder "${REPRO_WORK:-$root/work}")"
  results="$(host_folder "${REPRO_RESULTS:-$root/results}")"
  figures="$(host_folder "${REPRO_FIGURES:-$root/paper_figures}")"
  local tty=()
  if [ -t 0 ] && [ -t 1 ]; then tty=(--interactive --tty); fi
  local env_args=()
  if [ -n "${HF_TOKEN:-}" ]; then env_args=(--env HF_TOKEN); fi
  exec docker run --rm --init \
    ${tty[@]+"${tty[@]}"} \
    ${gpu_args[@]+"${gpu_args[@]}"} \
    ${env_args[@]+"${env_args[@]}"} \
    --user "$(id -u):$(id -g)" \
    --shm-size "${REPRO_DOCKER_SHM:-16g}" \
    --volume "$data:/data" \
    --volume "$cache:/cache" \
    --volume "$work:/work" \
    --volume "$results:/results" \
    --volume "$figures:/figures" \
    --entrypoint "$entrypoint" \
    "$image" "$@"
}

build_image() {
  require_engine "make docker-build"
  local revision
  revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
  local args=(--tag "$image" --build-arg "VERSION=$(project_version)" --build-arg "REVISION=$revision")
  local source_url
  source_url="$(git -C "$root" config --get remote.origin.url 2>/dev/null || true)"
  if [ -n "$source_url" ]; then args+=(--build-arg "SOURCE_URL=$source_url"); fi
  if [ -n "${DEBIAN_SNAPSHOT:-}" ]; then args+=(--build-arg "DEBIAN_SNAPSHOT=$DEBIAN_SNAPSHOT"); fi
  exec docker build "${args[@]}" --file "$root/Dockerfile" "$root"
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
  build) build_image ;;
  make)
    [ $# -gt 0 ] || die "usage: scripts/docker.sh make TARGET [VAR=VALUE ...]"
    require_engine "make docker-$1" "make $*"
    run_container make "$@" ;;
  run)
    require_engine "scripts/docker.sh run" "python -m repro $*"
    run_container repro "$@" ;;
  *) die "usage: scripts/docker.sh build | make TARGET [VAR=VALUE ...] | run [REPRO ARGS ...]" ;;
esac
