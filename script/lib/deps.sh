# Sourced by script/test and script/demo: installs the Debian packages the
# project needs that are missing (apt-get; nothing from PyPI or rubygems.org).
TRIMALLOC_APT_PACKAGES=(
  gcc make git time
  ruby ruby-dev rake rake-compiler ruby-minitest
  python3 python3-dev python3-setuptools python3-pytest python3-venv python3-pip
  python3-celery python3-redis redis-server python3-prometheus-client
  ruby-sidekiq ruby-redis puma
  libjemalloc2 libmimalloc2.0 python3-matplotlib
)

trimalloc_missing_packages() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  echo "${missing[@]}"
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
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
  # redis-server's package starts a system service; the tests start their own.
  $sudo systemctl stop redis-server 2>/dev/null || true
}
