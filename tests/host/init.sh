#!/bin/bash
# PID 1 of the sandbox's new pid namespace (run by boot.sh, in new mount/uts/ipc/net/cgroup namespaces):
# build a root that is the host's / under a tmpfs overlay, give it private /dev /proc /sys /run and a
# cgroup tree rooted at our own child cgroup, pivot into it and exec systemd.
#   env: SANDBOX_DIR, SANDBOX_PROJECT (bind-mounted read-write at the same path), SANDBOX_HOSTNAME,
#        SANDBOX_OVERLAY_SIZE (tmpfs size of every write made inside: /etc, /opt, /var/lib, ...)
set -euo pipefail
S=${SANDBOX_DIR:?}
R=$S/root
PROJ=${SANDBOX_PROJECT:-}
echo "init: pid $$ at $(date +%T.%N)"

mkdir -p "$S/ovl" "$R"
mount -t tmpfs -o "size=${SANDBOX_OVERLAY_SIZE:-5g},mode=700" sandbox-ovl "$S/ovl"
mkdir "$S/ovl/upper" "$S/ovl/work"
mount -t overlay sandbox-root -o "lowerdir=/,upperdir=$S/ovl/upper,workdir=$S/ovl/work" "$R"
# The checkout under test is the one place whose writes reach the host.
if [ -n "$PROJ" ]; then mount --bind "$PROJ" "$R$PROJ"; fi

# --- /etc, written into the overlay only --------------------------------------------------------
E=$R/etc
echo "${SANDBOX_HOSTNAME:-sandbox}" >"$E/hostname"
hostname "${SANDBOX_HOSTNAME:-sandbox}"
# Our own machine id: journal files and anything keyed on it must not look like the host's.
tr -d - </proc/sys/kernel/random/uuid >"$E/machine-id"
# Debian's "D /tmp" empties /tmp at boot, and the project (a real bind mount) may live there.
mkdir -p "$E/tmpfiles.d"
printf 'd /tmp 1777 root root -\n' >"$E/tmpfiles.d/tmp.conf"
# Units that touch hardware or kernel-global state, timers that are noise in a test, and Debian's
# own PostgreSQL cluster (the project runs its own server unit).
for u in console-getty.service container-getty@.service getty@.service serial-getty@.service \
         getty-static.service systemd-timesyncd.service systemd-pstore.service e2scrub_reap.service \
         postgresql.service postgresql@.service apt-daily.timer apt-daily-upgrade.timer \
         dpkg-db-backup.timer e2scrub_all.timer fstrim.timer man-db.timer systemd-tmpfiles-clean.timer \
         systemd-journald-audit.socket kmod-static-nodes.service systemd-modules-load.service \
         systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
         systemd-sysctl.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount \
         systemd-hwdb-update.service systemd-remount-fs.service systemd-tmpfiles-setup-dev.service \
         sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
         sys-fs-fuse-connections.mount dev-hugepages.mount systemd-firstboot.service; do
  ln -sf /dev/null "$E/systemd/system/$u"
done

# --- /dev: a private tmpfs with the usual nodes, nothing bound from the host's devtmpfs --------
mount -t tmpfs -o mode=755,nosuid,size=8m sandbox-dev "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3
mknod -m 666 "$R/dev/zero" c 1 5
mknod -m 666 "$R/dev/full" c 1 7
mknod -m 666 "$R/dev/random" c 1 8
mknod -m 666 "$R/dev/urandom" c 1 9
mknod -m 666 "$R/dev/tty" c 5 0
mkdir -m 755 "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
# PostgreSQL's dynamic shared memory lives here: its own tmpfs, not the 8 MB of /dev.
mount -t tmpfs -o mode=1777,nosuid,nodev,size=1g sandbox-shm "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
# systemd writes boot status to /dev/console: make it a host file the harness can show on failure.
: >"$R/dev/console"
: >"$S/console.log"
mount --bind "$S/console.log" "$R/dev/console"

# --- /proc of this pid namespace, kernel knobs read-only ------------------------------------------
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
for p in sys sysrq-trigger; do
  [ -e "$R/proc/$p" ] || continue   # kernels built without magic SysRq have no sysrq-trigger
  mount --bind "$R/proc/$p" "$R/proc/$p"
  mount -o remount,bind,ro,nosuid,nodev,noexec "$R/proc/$p"
done

# --- /sys read-only (this net namespace's view); cgroups mounted from inside the cgroup namespace ---
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then   # unified host: one hierarchy
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
else                                                         # hybrid host (v1 controllers + unified)
  mount -t tmpfs -o mode=755,nosuid,nodev,noexec sandbox-cgroup "$R/sys/fs/cgroup"
  for c in $(awk -F: '$2 != "" && $2 !~ /^name=/ {print $2}' /proc/self/cgroup); do
    mkdir "$R/sys/fs/cgroup/$c"
    mount -t cgroup -o "nosuid,nodev,noexec,$c" cgroup "$R/sys/fs/cgroup/$c"
  done
  mkdir "$R/sys/fs/cgroup/systemd" "$R/sys/fs/cgroup/unified"
  mount -t cgroup -o nosuid,nodev,noexec,none,name=systemd cgroup "$R/sys/fs/cgroup/systemd"
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup/unified"
fi

mount -t tmpfs -o mode=755,nosuid,nodev,size=512m sandbox-run "$R/run"
ip link set lo up

# --- pivot into the overlay and become systemd ----------------------------------------------------
cd "$R"
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
echo "init: exec systemd at $(date +%T.%N)"
# container=other: systemd skips what a container cannot do. Without CAP_SYS_BOOT its poweroff simply
# ends the namespace; CAP_SYS_ADMIN stays so units' sandboxing options (mount namespaces) work.
exec setpriv --bounding-set \
  -sys_module,-sys_time,-sys_boot,-sys_rawio,-syslog,-audit_control,-audit_read,-audit_write,-mac_admin,-mac_override,-wake_alarm,-block_suspend,-sys_pacct \
  -- env -i container=other TERM=dumb /lib/systemd/systemd --show-status=true
