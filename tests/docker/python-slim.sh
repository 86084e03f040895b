#!/usr/bin/env bash
# Test fixture only: a local stand-in for `python:3.11-slim` (no image registry is reachable
# here), so that the project's Dockerfile builds unchanged. Debian 12 ships Python 3.11.
#   tests/docker/python-slim.sh TAG LABEL
# Needs root and debootstrap. The host's pip.conf and trust store go in, so that `pip install`
# in the image's build stage reaches the package index as the host does.
set -euo pipefail
tag=${1:-python:3.11-slim}
label=${2:-batchstream.standin=python}
rootfs=$(mktemp -d /tmp/standin-python.XXXXXX)
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
  bookworm "$rootfs" http://deb.debian.org/debian >"$rootfs.log" 2>&1 \
  || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs"/usr/lib/python3.11/EXTERNALLY-MANAGED
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$rootfs/etc/pip.conf"; fi
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
# DEB_PYTHON_INSTALL_LAYOUT=deb_system: Debian's pip lays out `--prefix=/install` as
# /install/bin and /install/lib/python3/dist-packages, which the Dockerfile's
# `COPY --from=build /install /usr/local` puts on PATH and (with PYTHONPATH) on sys.path.
tar -C "$rootfs" -c . | docker import \
  --change 'ENV DEB_PYTHON_INSTALL_LAYOUT=deb_system' \
  --change 'ENV PYTHONPATH=/usr/local/lib/python3/dist-packages:/usr/local/lib/python3.11/site-packages' \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin' \
  --change "LABEL $label" \
  --change 'CMD ["python3"]' - "$tag"
