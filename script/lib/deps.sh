# Sourced by script/test and script/demo (and by script/test-ruby and
# script/test-python when run alone): installs the Debian packages the project
# needs that are missing (apt-get; nothing from PyPI or rubygems.org).
TRIMALLOC_APT_PACKAGES=(
  gcc make git time
  ruby ruby-dev rake rake-compiler ruby-minitest
  python3 python3-dev python3-setuptools python3-pytest python3-venv python3-pip mypy
  python3-celery python3-redis redis-server python3-prometheus-client
  ruby-sidekiq ruby-redis puma gunicorn ruby-bundler python3-aiohttp python3-uvicorn python3-starlette
  ruby-rails ruby-sqlite3 bundler
  libjemalloc2 libmimalloc2.0 python3-matplotlib golang-go
  musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
)

trimalloc_missing_packages() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  echo "${missing[@]}"
}

# apt-get [sudo] ARGS..., quiet unless it fails. Another apt or dpkg may be
# running (unattended upgrades, another session's install): apt-get waits for
# dpkg's lock itself (DPkg::Lock::Timeout), and a failure on one of apt's own
# locks (the package lists, the download cache), which it does not wait for,
# is retried; either way up to 10 minutes, never a failure on a lock.
trimalloc_apt() {
  local sudo=""
  [ "${1:-}" = sudo ] && { sudo=sudo; shift; }
  local deadline=$((SECONDS + 600)) out
  while :; do
    if out=$($sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq "$@" 2>&1); then
      return 0
    fi
    case "$out" in
      *"Could not get lock"* | *"Unable to lock"* | *"Unable to acquire the dpkg frontend lock"*)
        if [ $SECONDS -lt $deadline ]; then
          sleep 5
          continue
        fi ;;
    esac
    printf '%s\n' "$out" >&2
    return 1
  done
}

trimalloc_install_deps() {
  local missing
  missing=$(trimalloc_missing_packages "${TRIMALLOC_APT_PACKAGES[@]}")
  [ -z "$missing" ] && return 0
  echo "==> installing missing Debian packages: $missing"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "error: need root (or sudo) to apt-get install: $missing" >&2; return 1; }
    sudo="sudo"
  fi
  trimalloc_apt $sudo update ||
    echo "warning: apt-get update failed; installing from the package lists already there" >&2
  # shellcheck disable=SC2086
  if ! trimalloc_apt $sudo install -y --no-install-recommends $missing; then
    echo "error: apt-get install failed for: $missing (see above); not running the tests without them" >&2
    return 1
  fi
  # redis-server's package starts a system service; the tests start their own.
  $sudo systemctl stop redis-server 2>/dev/null || true
}
