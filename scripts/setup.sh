#!/usr/bin/env bash
# Installs everything mln_tf needs into a virtual environment ($VENV, default .venv):
#   data     Debian's Fashion-MNIST files, where apt is available and we are root;
#   venv     the virtual environment only, made with $PYTHON (default python3);
#   python   the virtual environment, the pinned packages and mln_tf itself.
# With no argument it does data and python. The venv keeps Debian's own Python usable
# (PEP 668). FASHION_DIR (default Debian's folder) is where the data step looks for the files.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
FASHION_DIR=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}

can_apt() { command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; }

apt_install() {
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@") >/dev/null
}

install_data() {
  if [ -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ]; then
    return
  fi
  if can_apt; then
    echo "Installing Debian's dataset-fashion-mnist package..."
    apt_install dataset-fashion-mnist \
      || echo "WARNING: could not install dataset-fashion-mnist; see README, 'Data'." >&2
  else
    echo "NOTE: Fashion-MNIST files not found in $FASHION_DIR." >&2
    echo "  Install them with 'sudo apt-get install dataset-fashion-mnist', pass the folder" >&2
    echo "  holding the four original files as --data-dir, or run on the bundled digits:" >&2
    echo "  make train ARGS=\"--dataset digits\"" >&2
  fi
}

make_venv() {
  if [ -x "$VENV/bin/python" ]; then
    return
  fi
  echo "Creating the virtual environment $VENV with $PYTHON..."
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    # Debian and Ubuntu ship venv's ensurepip in a separate package.
    if can_apt; then
      version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      echo "Installing python$version-venv..."
      apt_install "python$version-venv" || apt_install python3-venv
      "$PYTHON" -m venv "$VENV"
    else
      echo "ERROR: '$PYTHON -m venv' failed. On Debian/Ubuntu run" >&2
      echo "  sudo apt-get install python3-venv" >&2
      echo "and try again, or set PYTHON to another Python 3.10+." >&2
      exit 1
    fi
  fi
}

install_python() {
  make_venv
  local pip=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
  "${pip[@]}" install -r requirements.txt
  "${pip[@]}" install --no-deps -e .
}

case "${1:-all}" in
  data) install_data ;;
  venv) make_venv ;;
  python) install_python ;;
  all) install_data; install_python ;;
  *) echo "usage: $0 [data|venv|python|all]" >&2; exit 2 ;;
esac
