#!/usr/bin/env bash
# A real SLURM on this machine, for the test suite and CI:
#   tools/slurm_local.sh start    install (when missing, as root) and start munge +
#                                 slurmctld + one slurmd per "node"; wait until idle
#   tools/slurm_local.sh status   exit 0 when the cluster answers and its nodes are up
#   tools/slurm_local.sh stop     stop every daemon it started and remove its state
#   tools/slurm_local.sh env      print the `export SLURM_CONF=...` line to use it
# Everything (config, state, logs, munge socket and key) lives in $SLURM_LOCAL_DIR
# (default /tmp/megatron_vdit_slurm), so it neither reads nor touches /etc/slurm or a
# system munged. Nodes: SLURM_LOCAL_NODES (default 2) slurmd daemons on localhost
# (`slurmd -N`), each claiming all the machine's cores, in one partition `debug`.
# SLURM_LOCAL_NO_INSTALL=1: fail instead of installing missing packages.
# Jobs run as the user who submits them; the daemons run as the user who starts them.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/megatron_vdit_slurm}
NODES=${SLURM_LOCAL_NODES:-2}
PORT=${SLURM_LOCAL_PORT:-6817}         # slurmctld; the slurmds take the next NODES ports
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-90}     # seconds to wait for the nodes to become idle
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

die() { echo "slurm_local: error: $*" >&2; exit 1; }
log() { echo "slurm_local: $*" >&2; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null && return 0
  [[ -z ${SLURM_LOCAL_NO_INSTALL:-} ]] || die "slurm-wlm/munge are not installed (SLURM_LOCAL_NO_INSTALL is set)"
  [[ $(id -u) == 0 ]] || die "slurm-wlm/munge are not installed and installing needs root"
  command -v apt-get >/dev/null || die "slurm-wlm/munge are not installed and there is no apt-get"
  log "installing slurm-wlm and munge (apt-get)"
  # Debian's maintainer scripts must not start the system daemons: ours use their own
  # config. Timeouts keep a hung mirror from eating CI's time.
  timeout 300 apt-get update -q >"$DIR/apt.log" 2>&1 || die "apt-get update failed (see $DIR/apt.log)"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends \
    slurm-wlm munge >>"$DIR/apt.log" 2>&1 || die "apt-get install slurm-wlm munge failed (see $DIR/apt.log)"
}

write_config() {
  local host cpus user
  host=$(hostname -s)
  cpus=$(nproc)
  user=$(id -un)
  mkdir -p "$DIR"/{state,spool,munge,log}
  chmod 700 "$DIR/munge"
  [[ -s $DIR/munge/munge.key ]] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 2>/dev/null
                                     chmod 400 "$DIR/munge/munge.key"; }
  cat >"$CONF" <<EOF
# Written by tools/slurm_local.sh: a localhost test cluster, not for production.
ClusterName=vdit-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
# A test cluster: log enough to tell, after a failed test, what happened to a job.
SlurmctldDebug=debug
# No cgroups in containers: track processes by parentage, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Both "nodes" claim the same cores; let the config, not the hardware probe, decide.
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=DEFAULT CPUs=$cpus RealMemory=1024 State=UNKNOWN
EOF
  local i
  for ((i = 1; i <= NODES; i++)); do
    echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + i))" >>"$CONF"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$CONF"
}

start_daemons() {
  munged --force --socket="$DIR/munge/munge.socket.2" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed" || die "munged did not start (see $DIR/munge/munged.log)"
  slurmctld -f "$CONF" || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
  local i
  for ((i = 1; i <= NODES; i++)); do
    mkdir -p "$DIR/spool/n$i"
    slurmd -f "$CONF" -N "n$i" || die "slurmd n$i did not start (see $DIR/log/slurmd-n$i.log)"
  done
}

nodes_idle() {  # true when every node reports idle (or is running our jobs)
  local states
  states=$(timeout 10 sinfo -h -N -o "%N %t" 2>/dev/null) || return 1
  [[ $(grep -cE ' (idle|mix|alloc)$' <<<"$states") == "$NODES" ]]
}

wait_idle() {
  local waited=0
  until nodes_idle; do
    ((waited >= TIMEOUT)) && die "nodes not idle after ${TIMEOUT}s: $(timeout 10 sinfo -h -N -o '%N %t %E' 2>&1 | tr '\n' ';') (logs in $DIR/log)"
    sleep 1
    waited=$((waited + 1))
  done
}

stop_pidfile() {  # TERM, then KILL after 10 s, a daemon named by its pid file
  local pidfile=$1 pid i
  [[ -s $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

cmd_stop() {
  [[ -d $DIR ]] || return 0
  if [[ -s $DIR/slurmctld.pid ]]; then  # end our jobs first, so no task outlives the cluster
    timeout 10 scancel --full --user="$(id -un)" 2>/dev/null || true
  fi
  local f
  for f in "$DIR"/slurmd-*.pid; do [[ -e $f ]] && stop_pidfile "$f"; done
  stop_pidfile "$DIR/slurmctld.pid"
  stop_pidfile "$DIR/munge/munged.pid"
  rm -rf "$DIR"
  log "stopped"
}

cmd_start() {
  if cmd_status 2>/dev/null; then
    log "already running ($CONF)"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  cmd_stop 2>/dev/null || true  # leftovers of an earlier, broken start
  mkdir -p "$DIR"
  install_packages
  write_config
  start_daemons
  wait_idle
  log "up: $NODES node(s), partition debug ($CONF)"
  echo "export SLURM_CONF=$CONF"
}

cmd_status() {
  [[ -s $CONF && -s $DIR/slurmctld.pid ]] || { log "not running (no $CONF)"; return 1; }
  nodes_idle || { log "not ready: $(timeout 10 sinfo -h -N -o '%N %t' 2>&1 | tr '\n' ';')"; return 1; }
  timeout 10 sinfo >&2
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
