# Shared by scripts/demo.sh and the study scripts (sourced): a free loopback port, and the
# daemons of a provisioned consortium started in the background and stopped when the script exits.

# fl_prepare_run PREBUILT OUT: sets BIN to PREBUILT's binaries, or (PREBUILT empty) installs what
# is missing, builds and uses build/bin; sets D to the folder OUT, created and emptied.
fl_prepare_run() {
  if [ -z "$1" ]; then
    scripts/deps.sh
    scripts/build.sh
    BIN=$PWD/build/bin
  else
    BIN=$(cd "$1" && pwd)
  fi
  mkdir -p "$2" && D=$(cd "$2" && pwd)
  rm -rf "${D:?}"/*
}

fl_free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

FL_PIDS=()
fl_stop_daemons() {
  for p in "${FL_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap fl_stop_daemons EXIT

# fl_start_coordinator BIN DIR: fl-coordinator with DIR/pki/coordinator's config, in the
# background, waiting until it listens. Logs go to DIR/logs/.
fl_start_coordinator() {
  local bin=$1 d=$2 conf
  conf=$d/pki/coordinator/coordinator.conf
  printf 'port_file: "%s"\nmetrics_address: "127.0.0.1:0"\n' "$d/coordinator.port" >> "$conf"
  "$bin/fl-coordinator" --config "$conf" > "$d/logs/coordinator.log" 2>&1 &
  FL_PIDS+=($!)
  for _ in $(seq 100); do [ -s "$d/coordinator.port" ] && break; sleep 0.1; done
}

# fl_start_clients BIN DIR SITE...: one fl-client per SITE on the CPU, in the background, that
# exits once the coordinator has no job left (FL_EXIT_WHEN_IDLE=false: stays until stopped).
# Logs go to DIR/logs/.
fl_start_clients() {
  local bin=$1 d=$2 conf site
  shift 2
  for site in "$@"; do
    conf=$d/pki/sites/$site/client.conf
    printf 'exit_when_idle: %s\ndevice: "cpu"\nloader_threads: 1\n' "${FL_EXIT_WHEN_IDLE:-true}" \
      >> "$conf"
    sed -i 's/^device: "auto"$//' "$conf"
    "$bin/fl-client" --config "$conf" > "$d/logs/$site.log" 2>&1 &
    FL_PIDS+=($!)
  done
}

# fl_start_daemons BIN DIR SITE...: the coordinator, then the sites' clients.
fl_start_daemons() {
  fl_start_coordinator "$1" "$2"
  fl_start_clients "$@"
}
