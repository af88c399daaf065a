#!/usr/bin/env bash
# Builds the OCI images of the daemons from Debian 12's own packages (deploy/README.md,
# "Containers"):
#   1. a root file system made by mmdebstrap (bookworm, minbase) holding exactly the Debian
#      packages whose shared libraries the built binary links (found with ldd and dpkg -S on
#      this Debian 12 build host), a system user fl (uid/gid 10001) and the daemon's folders;
#   2. an image FROM scratch with that root file system and the binary, run as 10001, meant to
#      run with a read-only root file system (the state is a volume, the kit a read-only mount).
#
# Usage: deploy/container/build.sh [--bin DIR] [--tag TAG] [--out DIR] [coordinator] [client]
#   --bin  the built binaries (default build/bin)   --tag  image tag (default 0.1.0)
#   --out  where the root file systems are kept (default build/container)
# Needs mmdebstrap and podman (or buildah), root or unprivileged user namespaces, and a Debian
# mirror. Exit status 0 when every image was built.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=build/bin tag=0.1.0 out=build/container
daemons=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    coordinator|client) daemons+=("$1"); shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#daemons[@]} -gt 0 ] || daemons=(coordinator client)
for tool in mmdebstrap ldd dpkg-query; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
if command -v podman >/dev/null; then builder=(podman build)
elif command -v buildah >/dev/null; then builder=(buildah bud)
else echo "build.sh: neither podman nor buildah is installed" >&2; exit 1; fi

# The Debian packages that ship the shared libraries `binary` links (libc6 is in minbase).
runtime_packages() {
  local libs
  libs=$(ldd "$1" | awk '/=> \//{print $3}')
  # shellcheck disable=SC2086  # one path per word
  # A path dpkg does not know (a link made by ldconfig) is looked up again by its target.
  { dpkg-query -S $libs || true
    for lib in $libs; do readlink -f "$lib"; done | xargs dpkg-query -S || true
  } 2>/dev/null | cut -d: -f1 | sort -u | grep -v '^libc6$' | paste -sd, -
}

mkdir -p "$out"
for daemon in "${daemons[@]}"; do
  name=fl-$daemon
  [ -x "$bin/$name" ] || { echo "build.sh: $bin/$name not built (scripts/build.sh)" >&2; exit 1; }
  packages=$(runtime_packages "$bin/$name")
  echo "build.sh: $name needs $packages"
  context=$out/$name
  rm -rf "$context" && mkdir -p "$context"
  # The hooks' "$1" (the new root) is expanded by mmdebstrap, not here.
  # shellcheck disable=SC2016
  mmdebstrap --variant=minbase --include="$packages" \
    --customize-hook='chroot "$1" groupadd --system --gid 10001 fl' \
    --customize-hook='chroot "$1" useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin fl' \
    --customize-hook="install -d -m 0700 -o 10001 -g 10001 \"\$1/var/lib/$name\"" \
    --customize-hook="install -d -m 0750 -o 0 -g 10001 \"\$1/etc/$name\"" \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/usr/share/doc "$1"/usr/share/man' \
    bookworm "$context/rootfs.tar"
  install -m 0755 "$bin/$name" "$context/$name"
  cp deploy/container/Containerfile."$daemon" "$context/Containerfile"
  "${builder[@]}" --tag "$name:$tag" --file "$context/Containerfile" "$context"
done
