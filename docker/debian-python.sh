#!/usr/bin/env bash
# The Dockerfile's base (PYTHON_IMAGE) built from Debian packages alone, for machines where no
# container registry answers: Debian bookworm (minbase, by debootstrap), then Debian's python3
# (3.11) with venv on top. Both are built once and tagged with the sha256 of this file, so an
# unchanged recipe is reused from the engine's image store and a changed one builds anew
# (about 4 minutes on 2 cores, most of it debootstrap).
#   docker/debian-python.sh      # prints the Python image's tag
# Needs root, debootstrap, and a Docker engine that builds with BuildKit (DOCKER, default
# docker; DOCKER_BUILDKIT=1 for Docker 20.10). MIRROR: the Debian mirror (deb.debian.org).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
docker=${DOCKER:-docker}
mirror=${MIRROR:-http://deb.debian.org/debian}
recipe=$(sha256sum "$here/debian-python.sh" | cut -c1-12)
debian=local/admitd-debian:bookworm-$recipe
python=local/admitd-python:3.11-bookworm-$recipe
say() { echo "debian-python: $*" >&2; }
have() { "$docker" image inspect "$1" >/dev/null 2>&1; }

# One build at a time on a machine: a second caller waits, then finds the images made.
exec 9>"${TMPDIR:-/tmp}/admitd-debian-python.lock"
flock 9

if have "$python"; then
  echo "$python"
  exit 0
fi
if ! have "$debian"; then
  command -v debootstrap >/dev/null || { say "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
  rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/admitd-rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  say "debootstrap bookworm (minbase) from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
    { tail -20 "$rootfs.log" >&2; say "debootstrap failed"; exit 1; }
  rm -f "$rootfs.log"
  # As Debian's own container images: security updates, no recommends, and no manuals,
  # documentation or translations now or in later installs; nothing cached.
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$rootfs/etc/apt/apt.conf.d/90admitd-slim"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90admitd-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$rootfs"/usr/share/{man,info,locale}/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
  tar -C "$rootfs" -c . |
    "$docker" import --change 'ENV LANG=C.UTF-8' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$debian" \
      >/dev/null
  say "built $debian"
fi

say "building $python: python3 python3-venv"
"$docker" build --quiet --tag "$python" --build-arg "BASE=$debian" - >/dev/null <<'EOF'
ARG BASE
FROM ${BASE}
RUN export DEBIAN_FRONTEND=noninteractive && apt-get update && apt-get upgrade -y \
    && apt-get install -y python3 python3-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log
EOF
echo "$python"
