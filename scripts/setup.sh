#!/usr/bin/env bash
# Installs everything mln_tf needs: the Python packages and, where apt is available,
# Debian's Fashion-MNIST files (read offline by the noisy_fashion_mnist dataset).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

FASHION_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "Installing Debian's dataset-fashion-mnist package..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "WARNING: could not install dataset-fashion-mnist; see README, 'Data'." >&2
  else
    echo "NOTE: Fashion-MNIST files not found in $FASHION_DIR." >&2
    echo "  Install them with 'sudo apt-get install dataset-fashion-mnist', or pass the folder" >&2
    echo "  holding the four original files as --data-dir. The bundled digits data works without them." >&2
  fi
fi

"$PYTHON" -m pip install -q --disable-pip-version-check -r requirements.txt
"$PYTHON" -m pip install -q --disable-pip-version-check --no-deps -e .
