#!/bin/bash
# Host side of SystemdSandbox.start(): move into a fresh child cgroup of every hierarchy we are in, then
# unshare the namespaces; unshare's forked child (PID 1 of the new pid namespace) runs init.sh.
#   env: SANDBOX_DIR (work dir), SANDBOX_CGROUP (child cgroup name); the rest is read by init.sh
# Why a child cgroup: --cgroup makes our own cgroup the namespace's root, so systemd inside can only
# see and write below it, and the host can remove the whole tree afterwards (cgroups.list).
set -euo pipefail
S=${SANDBOX_DIR:?}
NAME=${SANDBOX_CGROUP:?}
: >"$S/cgroups.list"
own=$(cat /proc/self/cgroup)   # read once: each move below changes this file while we would read it
while IFS=: read -r _id ctrl path; do
  if [ -z "$ctrl" ]; then   # the cgroup2 hierarchy: /sys/fs/cgroup/unified (hybrid) or /sys/fs/cgroup itself
    if [ -d /sys/fs/cgroup/unified ]; then dir=/sys/fs/cgroup/unified$path; else dir=/sys/fs/cgroup$path; fi
  else
    ctrl=${ctrl#name=}        # name=systemd is mounted at /sys/fs/cgroup/systemd
    dir=/sys/fs/cgroup/$ctrl$path
  fi
  child=${dir%/}/$NAME
  mkdir -p "$child"
  echo "$child" >>"$S/cgroups.list"
  if [ "$ctrl" = cpuset ]; then   # a v1 cpuset child starts empty and refuses tasks until these are set
    cat "${dir%/}/cpuset.cpus" >"$child/cpuset.cpus"
    cat "${dir%/}/cpuset.mems" >"$child/cpuset.mems"
  fi
  echo $$ >"$child/cgroup.procs"
done <<<"$own"
echo "boot: launcher $$ in $(tr '\n' ' ' </proc/self/cgroup)"
# --kill-child: if the launcher dies (SIGKILL from stop()), the kernel SIGKILLs PID 1 and so the namespace.
exec unshare --pid --fork --kill-child=SIGKILL --mount --propagation private --uts --ipc --net --cgroup \
  -- /bin/bash "$(dirname "$0")/init.sh"
