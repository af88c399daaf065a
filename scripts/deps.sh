#!/usr/bin/env bash
# Installs the Debian 12 packages the build, tests and demo need (only those missing).
set -euo pipefail
PKGS=(build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libdcmtk-dev dcmtk prometheus-cpp-dev libsqlite3-dev sqlite3 libssl-dev openssl
  libgtest-dev libgmock-dev libbenchmark-dev python3 python3-torch python3-torchvision python3-numpy
  clang libclang-rt-14-dev gdb clang-format  # clang-format: the code's format (scripts/test.sh)
  libdnnl-dev  # oneDNN's sgemm for the DP ghost norms (models/gram.h)
  libgloo-dev  # the headers of the Gloo process groups in Debian's LibTorch (privacy/process_group.cc)
  libcli11-dev  # every program's command line (common/cli.h)
  libjpeg62-turbo-dev libpng-dev zlib1g-dev  # the public datasets' JPEG, PNG and .csv.gz (client/)
  python3-matplotlib  # the federation study's curves (scripts/fed_study.py)
  libcivetweb-dev  # /metrics, /healthz, /readyz (common/monitoring.h)
  orthanc  # a real PACS (DIMSE C-FIND/C-GET, DICOM TLS) that client/pacs_test.cc starts on loopback
  libcurl4-openssl-dev  # a PACS over DICOMweb: QIDO-RS and WADO-RS over HTTP(S) (client/pacs_dicomweb.h)
  orthanc-dicomweb  # Orthanc's DICOMweb plugin, which client/pacs_dicomweb_test.cc runs as the real server
  nginx-light  # HTTPS with a client certificate in front of Orthanc (client/pacs_dicomweb_tls_test.cc)
  # deploy/ checked by the tests (tests/deploy_test.py, tests/prometheus_test.py):
  prometheus  # promtool and a real Prometheus server
  systemd  # systemd-analyze verify / security of deploy/systemd
  shellcheck python3-yaml python3-kubernetes
  chromium)  # draws flctl report's HTML in tests/federation_test.py (headless screenshot)
# kubectl (kustomize) for deploy/kubernetes: Debian's kubernetes-client, unless a kubectl is there.
command -v kubectl >/dev/null || PKGS+=(kubernetes-client)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
