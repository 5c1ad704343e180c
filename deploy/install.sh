#!/usr/bin/env bash
# Install the food-orders pipeline on this host as systemd services, offline, from a checkout that
# bin/setup prepared (Kafka jars, a wheelhouse of the pinned Python packages).
#
#   deploy/install.sh [--prefix DIR] [--listen ADDRESS]
#         install, or upgrade in place (config, password, data and the consumer count are kept); start
#         food-orders.target. --listen: Kafka (SASL_SSL, SCRAM, ACLs) and PostgreSQL (TLS, scram-sha-256)
#         also serve worker hosts on ADDRESS; writes /etc/food-orders/worker-bundle.tar for them
#   deploy/install.sh --role worker --join BUNDLE [--prefix DIR]
#         a worker host: supervisord with consumers (and a producer, not started) against the Kafka
#         and PostgreSQL of the host that wrote BUNDLE
#   deploy/install.sh --remove         stop and remove units and code; keep config, data and logs
#   deploy/install.sh --purge          --remove, then delete config, data, logs and the users (says what first)
#
# Layout: code + venv in /opt/food-orders, config in /etc/food-orders (food-orders.env 0640
# root:food-orders), state in /var/lib/food-orders, logs in /var/log/food-orders and the journal,
# supervisor socket in /run/food-orders (0770, group food-orders = the operators).
set -Eeuo pipefail
umask 022  # the service users must read the code and configs whatever root's umask is

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/food-orders
ETC=/etc/food-orders
LIB=/var/lib/food-orders
LOG=/var/log/food-orders
UNITS=/etc/systemd/system
SERVICES=(food-orders-zookeeper.service food-orders-kafka.service food-orders-postgresql.service food-orders.service)
APP_USER=food-orders        # the producer and consumers (supervisord); its group is the operators' group
KAFKA_USER=food-orders-kafka
MODE=install
ROLE=""       # server (the default) or worker; an upgrade keeps the installed one
LISTEN=""     # --listen: the address worker hosts reach this host's Kafka and PostgreSQL on
JOIN=""       # --join: the bundle a worker joins with
WORKER_KAFKA_USER=food-orders-worker
WORKER_DB_ROLE=orders_worker
EXTERNAL_PORT=9094  # Kafka's listener for worker hosts

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }
usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
    --role) [ $# -ge 2 ] || die "--role needs server or worker"; ROLE="$2"; shift 2 ;;
    --role=*) ROLE="${1#--role=}"; shift ;;
    --listen) [ $# -ge 2 ] || die "--listen needs an address"; LISTEN="$2"; shift 2 ;;
    --listen=*) LISTEN="${1#--listen=}"; shift ;;
    --join) [ $# -ge 2 ] || die "--join needs a bundle file (worker-bundle.tar of the Kafka host)"; JOIN="$2"; shift 2 ;;
    --join=*) JOIN="${1#--join=}"; shift ;;
    --remove) MODE=remove; shift ;;
    --purge) MODE=purge; shift ;;
    -h|--help) usage 0 ;;
    *) printf 'install.sh: error: unknown argument %q\n' "$1" >&2; usage 2 ;;
  esac
done
PREFIX="${PREFIX%/}"
case "$ROLE" in server|worker|"") ;; *) die "--role must be server or worker, got '$ROLE'" ;; esac
[ -n "$ROLE" ] || [ -z "$JOIN" ] || ROLE=worker  # --join: a worker, whatever is installed (checked below)
if [ -n "$LISTEN" ]; then
  /usr/bin/python3 -c 'import ipaddress, sys; a = ipaddress.ip_address(sys.argv[1]); sys.exit(a.is_loopback or a.is_unspecified)' "$LISTEN" 2>/dev/null \
    || die "--listen needs this host's IP address that workers reach (not loopback, not 0.0.0.0), got '$LISTEN'"
fi
# Units, supervisord.conf and the wrappers name this path unquoted: plain characters only.
[[ "$PREFIX" =~ ^(/[A-Za-z0-9._-]+)+$ ]] || die "--prefix must be an absolute path of letters, digits, . _ - and /, got '$PREFIX'"
case "$PREFIX" in /usr|/usr/local|/opt|/etc|/var|/var/lib|/srv|/home) die "--prefix $PREFIX is a system directory: name one of its own, e.g. $PREFIX/food-orders" ;; esac
MARK=.food-orders-install  # in the prefix: what --remove deletes is ours

[ "$(id -u)" = 0 ] || die "run as root: it creates system users, $ETC, $LIB and systemd units"
[ -d /run/systemd/system ] || die "systemd is not running as PID 1 here: the units cannot be started"
# shellcheck source=deploy/workers.sh
. "$REPO/deploy/workers.sh"  # check_bundle, server_tls, serve_workers: worker hosts

# -- remove / purge --------------------------------------------------------------------------------
installed_prefix() {  # where an earlier install put the code (the units name it)
  sed -n 's|^ExecStart=\(.*\)/venv/bin/supervisord .*|\1|p' "$UNITS/food-orders.service" 2>/dev/null || true
}
remove() {
  local prefix; prefix="$(installed_prefix)"; prefix="${prefix:-$PREFIX}"
  if [ -f "$UNITS/food-orders.target" ]; then
    systemctl disable --now food-orders.target "${SERVICES[@]}" >/dev/null 2>&1 || true
  fi
  for u in food-orders.target "${SERVICES[@]}"; do rm -f "$UNITS/$u"; done
  systemctl daemon-reload
  systemctl reset-failed "${SERVICES[@]}" >/dev/null 2>&1 || true
  if [ -f "$prefix/$MARK" ]; then
    rm -rf "${prefix:?}/releases" "$prefix/venv" "$prefix/kafka" "$prefix/bin" "$prefix/README.md" "$prefix/$MARK"
    rmdir "$prefix" 2>/dev/null || say "kept $prefix: it holds files the installer did not put there"
  fi
  rm -f /etc/profile.d/food-orders.sh /usr/local/bin/food-orders
  say "removed: units, $prefix, /usr/local/bin/food-orders, /etc/profile.d/food-orders.sh"
}
was_worker() { grep -qs '^PIPELINE_ROLE=worker$' "$ETC/food-orders.env"; }
users="users $APP_USER, $KAFKA_USER"; was_worker && users="user $APP_USER"
if [ "$MODE" = remove ]; then
  remove
  say "kept: $ETC (configuration, passwords, consumer count), $LIB (data), $LOG (logs), $users"
  exit 0
fi
if [ "$MODE" = purge ]; then
  say "purge deletes, after removing the units and code:"
  for d in "$LIB" "$LOG" "$ETC"; do
    data="Kafka topics, ZooKeeper, the PostgreSQL cluster with every order"; was_worker && data="the programs' state"
    [ -e "$d" ] && say "  $d ($(du -sh "$d" 2>/dev/null | cut -f1): $(case $d in "$LIB") echo "$data" ;; "$LOG") echo logs ;; *) echo "configuration, passwords, consumer count" ;; esac))"
  done
  say "  $users, group $APP_USER"
  remove
  rm -rf "$LIB" "$LOG" "$ETC"
  for u in "$APP_USER" "$KAFKA_USER"; do id "$u" >/dev/null 2>&1 && userdel "$u" 2>/dev/null; done
  getent group "$APP_USER" >/dev/null && groupdel "$APP_USER"
  getent group "$KAFKA_USER" >/dev/null && groupdel "$KAFKA_USER"
  say "purged"
  exit 0
fi

# -- checks, before anything is changed ------------------------------------------------------------
env_value() {  # the value of KEY in the installed env file, or $2
  local v=""
  [ -f "$ETC/food-orders.env" ] && v="$(sed -n "s/^$1=//p" "$ETC/food-orders.env" | tail -1)"
  printf '%s' "${v:-$2}"
}
installed_role="$(env_value PIPELINE_ROLE server)"
[ -f "$ETC/food-orders.env" ] || installed_role=""
[ -n "$ROLE" ] || ROLE="${installed_role:-server}"
[ -z "$installed_role" ] || [ "$installed_role" = "$ROLE" ] \
  || die "this host is installed with --role $installed_role; to make it a $ROLE, run --purge first (it deletes its data)"
[ "$ROLE" = worker ] && [ -n "$LISTEN" ] && die "--listen is for the host that serves Kafka and PostgreSQL, not a worker"
[ "$ROLE" = server ] && [ -n "$JOIN" ] && die "--join is for a worker (--role worker)"
[ -n "$LISTEN" ] || [ "$ROLE" = worker ] || LISTEN="$(env_value PIPELINE_LISTEN_ADDRESS '')"
if [ "$ROLE" = worker ] && [ -z "$JOIN" ] && [ ! -f "$ETC/food-orders.env" ]; then
  die "a worker needs --join BUNDLE: worker-bundle.tar from the Kafka host (install.sh --listen ADDRESS writes it)"
fi
if [ "$ROLE" = server ]; then
  java_major() { /usr/bin/java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print v[1]; exit}'; }
  [ -x /usr/bin/java ] || die "no Java runtime at /usr/bin/java: apt-get install openjdk-17-jre-headless"
  major="$(java_major || true)"
  [ -n "$major" ] || die "/usr/bin/java does not run: apt-get install openjdk-17-jre-headless"
  [ "$major" -ge 17 ] || die "Java 17 or newer needed at /usr/bin/java, found Java $major"
  if [ -f "$LIB/postgresql/PG_VERSION" ]; then  # an existing cluster needs the server of its own major version
    PG_BIN="/usr/lib/postgresql/$(cat "$LIB/postgresql/PG_VERSION")/bin"
    [ -x "$PG_BIN/postgres" ] || die "the cluster in $LIB/postgresql is PostgreSQL $(cat "$LIB/postgresql/PG_VERSION") but $PG_BIN/postgres is missing: apt-get install postgresql-$(cat "$LIB/postgresql/PG_VERSION")"
  else
    PG_BIN="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null | sort -V | tail -1 || true)"
    [ -n "$PG_BIN" ] || die "no PostgreSQL server under /usr/lib/postgresql: apt-get install postgresql"
    PG_BIN="$(dirname "$PG_BIN")"
  fi
  command -v ss >/dev/null || die "ss not found (it checks the ports): apt-get install iproute2"
  id postgres >/dev/null 2>&1 || die "no postgres account (Debian's postgresql package creates it)"
fi
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || die "python3 with venv needed: apt-get install python3-venv"
command -v openssl >/dev/null || die "openssl not found (certificates for --listen and --join): apt-get install openssl"
WHEELHOUSE="$REPO/.local/wheelhouse"
KAFKA_LIB="$REPO/.local/kafka/lib"
[ "$(cat "$WHEELHOUSE/.requirements.sha256" 2>/dev/null)" = "$(sha256sum "$REPO/requirements-runtime.txt" | cut -d' ' -f1)" ] \
  || die "no wheelhouse for requirements-runtime.txt in $WHEELHOUSE: run bin/setup in the checkout first (on a machine with the package index)"
[ "$ROLE" = worker ] || (cd "$KAFKA_LIB" 2>/dev/null && sha256sum --quiet --strict -c "$REPO/deploy/kafka/jars.manifest" >/dev/null 2>&1) \
  || die "Kafka jars missing or damaged in $KAFKA_LIB: run bin/setup in the checkout first"
parent="$PREFIX"; while [ ! -e "$parent" ]; do parent="$(dirname "$parent")"; done
[ -d "$parent" ] && [ -w "$parent" ] || die "cannot write the prefix $PREFIX ($parent is not a writable directory)"
if [ -d "$PREFIX" ] && [ ! -f "$PREFIX/$MARK" ] && [ -n "$(ls -A "$PREFIX")" ]; then
  die "$PREFIX exists and is not a food-orders install: name an empty or new directory with --prefix"
fi
if grep -qs 'bin/pipeline services start' "$UNITS/food-orders.service"; then
  die "an older food-orders.service (servers started from the checkout) is installed: stop it, run its checkout's bin/pipeline services stop, remove $UNITS/food-orders.service, then install (its data stays in that checkout's var/)"
fi

if [ "$ROLE" = server ]; then
  ZK_PORT="$(env_value PIPELINE_ZOOKEEPER_PORT 2181)"
  KAFKA_PORT="$(env_value KAFKA_BOOTSTRAP_SERVERS 127.0.0.1:9092)"; KAFKA_PORT="${KAFKA_PORT##*:}"
  PG_PORT="$(env_value DATABASE_URL postgresql://x@127.0.0.1:5433/orders)"; PG_PORT="${PG_PORT##*:}"; PG_PORT="${PG_PORT%%/*}"
  ports=("zookeeper:$ZK_PORT" "kafka:$KAFKA_PORT" "postgresql:$PG_PORT")
  [ -z "$LISTEN" ] || ports+=("kafka:$EXTERNAL_PORT")
  for pp in "${ports[@]}"; do
    port="${pp#*:}"
    pid="$(ss -Hltnp "sport = :$port" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1 || true)"
    # Ours (an upgrade) only if it runs in that server's own unit.
    if [ -n "$pid" ] && ! grep -q "/food-orders-${pp%%:*}.service\$" "/proc/$pid/cgroup" 2>/dev/null; then
      die "port $port (${pp%%:*}) is already in use by pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo '?')); stop it or change the port in $ETC/food-orders.env"
    fi
  done
  if [ -n "$LISTEN" ]; then
    # Not `ip | grep -q`: grep quitting early fails the pipeline under pipefail.
    addresses="$(ip -o addr show 2>/dev/null || true)"
    grep -qw "inet6\? ${LISTEN}" <<<"$addresses" \
      || die "--listen $LISTEN: no interface of this host has that address (ip addr)"
  fi
else
  BUNDLE="$(mktemp -d)"; trap 'rm -rf "$BUNDLE"' EXIT
  [ -z "$JOIN" ] || check_bundle
fi

# -- from here on the host changes -----------------------------------------------------------------
changed=0
declare -A restart=()  # units whose code, config or unit file changed: restarted at the end, no others
trap 'say "install.sh: failed at line $LINENO; re-run after fixing the cause (every step is idempotent)" >&2' ERR
touched() { changed=1; local u; for u in "$@"; do restart[$u]=1; done; }
put() {  # put SRC DEST MODE OWNER [UNIT...]: install a file only when its content differs; mark the units
  local src="$1" dest="$2" mode="$3" owner="$4"; shift 4
  if ! cmp -s "$src" "$dest" 2>/dev/null; then
    install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$src" "$dest"; touched "$@"
  else
    chmod "$mode" "$dest"; chown "$owner" "$dest"
  fi
}
render() {  # render TEMPLATE: the template with @KEY@ and ${key} placeholders filled in, on stdout
  /usr/bin/python3 - "$1" <<'PY'
import os, string, sys
text = open(sys.argv[1]).read()
hardening = open(os.environ["R_HARDENING"]).read().split("\n", 1)[1].strip()
for key in ("PREFIX", "ZK_PORT", "KAFKA_PORT", "PG_PORT", "PG_BIN", "PG_LISTEN", "PG_TLS", "SERVER_UNITS",
            "TARGET_UNITS", "PRODUCER_AUTOSTART", "NETWORK_ONLINE"):
    text = text.replace(f"@{key}@", os.environ[f"R_{key}"])
text = text.replace("@HARDENING@", hardening)
values = {"data_dir": os.environ.get("R_DATA_DIR", ""), "zookeeper_port": os.environ["R_ZK_PORT"],
          "kafka_port": os.environ["R_KAFKA_PORT"], "controller_port": "9093",
          "listen_address": os.environ["R_LISTEN"], "external_port": os.environ["R_EXTERNAL_PORT"]}
sys.stdout.write(string.Template(text).safe_substitute(values))
PY
}
TLS="$ETC/tls"
if [ "$ROLE" = server ]; then
  ROLE_SERVICES=("${SERVICES[@]}")
  server_units="food-orders-kafka.service food-orders-postgresql.service"; producer_autostart=true
  pg_listen="127.0.0.1${LISTEN:+,$LISTEN}"
  network_online="${LISTEN:+network-online.target}"  # the address to listen on must exist first
  pg_tls="${LISTEN:+ -c ssl=on -c ssl_cert_file=$TLS/postgresql.pem -c ssl_key_file=$TLS/postgresql.key -c ssl_min_protocol_version=TLSv1.2}"
else
  ROLE_SERVICES=(food-orders.service)
  server_units=""; producer_autostart=false; pg_listen=""; pg_tls=""; network_online=network-online.target
  ZK_PORT="" KAFKA_PORT="" PG_PORT="" PG_BIN=""
fi
merge_env() {  # merge_env BASE OVERRIDES: BASE with each KEY=VALUE of OVERRIDES set where it stands (else appended)
  /usr/bin/python3 - "$1" "$2" <<'PY'
import sys
base, overrides = (open(p).read().splitlines() for p in sys.argv[1:3])
new = dict(line.split("=", 1) for line in overrides if "=" in line and not line.startswith("#"))
out, seen = [], set()
for line in base:
    key = line.split("=", 1)[0]
    if "=" in line and not line.startswith("#") and key in new:
        line, _ = f"{key}={new[key]}", seen.add(key)
    out.append(line)
out += [f"{k}={v}" for k, v in new.items() if k not in seen]
print("\n".join(out))
PY
}
RENEW_S=$((30 * 86400))  # certificates that expire within 30 days are renewed by an install
export R_PREFIX="$PREFIX" R_ZK_PORT="$ZK_PORT" R_KAFKA_PORT="$KAFKA_PORT" R_PG_PORT="$PG_PORT" R_PG_BIN="$PG_BIN" \
       R_HARDENING="$REPO/deploy/systemd/hardening.conf" R_LISTEN="$LISTEN" R_EXTERNAL_PORT="$EXTERNAL_PORT" \
       R_PG_LISTEN="$pg_listen" R_PG_TLS="$pg_tls" R_SERVER_UNITS="$server_units" \
       R_TARGET_UNITS="${ROLE_SERVICES[*]}" R_PRODUCER_AUTOSTART="$producer_autostart" R_NETWORK_ONLINE="$network_online"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP" "${BUNDLE:-}"' EXIT

if [ "$ROLE" = server ]; then
  say "==> users: $APP_USER (programs; its group = operators), $KAFKA_USER (ZooKeeper, Kafka), postgres (PostgreSQL)"
else
  say "==> users: $APP_USER (programs; its group = operators); worker host of the Kafka and PostgreSQL in $JOIN"
fi
getent group "$APP_USER" >/dev/null || groupadd --system "$APP_USER"
id "$APP_USER" >/dev/null 2>&1 || useradd --system --gid "$APP_USER" --home-dir "$LIB/pipeline" --no-create-home --shell /usr/sbin/nologin "$APP_USER"
[ "$ROLE" = worker ] || getent group "$KAFKA_USER" >/dev/null || groupadd --system "$KAFKA_USER"
[ "$ROLE" = worker ] || id "$KAFKA_USER" >/dev/null 2>&1 || useradd --system --gid "$KAFKA_USER" --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin "$KAFKA_USER"

say "==> directories"
install -d -m 0755 -o root -g root "$PREFIX" "$PREFIX/bin" "$PREFIX/releases" "$PREFIX/kafka" "$ETC" "$LIB"
touch "$PREFIX/$MARK"
install -d -m 0770 -o root -g "$APP_USER" "$ETC/conf.d"
install -d -m 0755 -o root -g root "$TLS"
if [ "$ROLE" = server ]; then
  install -d -m 0750 -o "$KAFKA_USER" -g "$KAFKA_USER" "$LIB/zookeeper" "$LIB/kafka" "$LIB/zookeeper/data" "$LIB/kafka/data"
  install -d -m 0700 -o postgres -g postgres "$LIB/postgresql"
fi
install -d -m 0750 -o "$APP_USER" -g "$APP_USER" "$LIB/pipeline"
install -d -m 2750 -o "$APP_USER" -g "$APP_USER" "$LOG"

say "==> code: the project and its pinned packages, offline from the checkout's wheelhouse"
PROGRAMS=food-orders.service
py="$(/usr/bin/python3 -c 'import sys; print("py%d%d" % sys.version_info[:2])')"
source_id="$(cd "$REPO" && find pipeline pyproject.toml requirements-runtime.txt -type f ! -name '*.pyc' | sort | xargs sha256sum | sha256sum | cut -c1-12)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -1)"
release_id="$version-$py-$source_id"
release="$PREFIX/releases/$release_id"
previous="$(readlink "$PREFIX/venv" 2>/dev/null || true)"
if [ ! -f "$release/.complete" ]; then  # written last: an interrupted install is redone
  rm -rf "$release"
  # Built from a copy, so a read-only checkout works and no build/ appears in it; the build backend
  # (setuptools) comes from the wheelhouse too.
  mkdir -p "$TMP/src" && cp -r "$REPO/pipeline" "$REPO/pyproject.toml" "$REPO/requirements-runtime.txt" "$TMP/src/"
  /usr/bin/python3 -m venv "$release/venv"
  pip=("$release/venv/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$WHEELHOUSE")
  "${pip[@]}" setuptools==84.2.1 || die "the wheelhouse does not fit /usr/bin/python3 ($py): run bin/setup with it"
  "${pip[@]}" --no-build-isolation "$TMP/src" || die "the wheelhouse does not fit /usr/bin/python3 ($py): run bin/setup with it"
  "$release/venv/bin/python" -c 'import pipeline.probe, supervisor, confluent_kafka, psycopg2'
  touch "$release/.complete"
  say "    installed release $release_id"
else
  say "    release $release_id already installed"
fi
if [ "$previous" != "releases/$release_id/venv" ]; then
  ln -sfn "releases/$release_id/venv" "$PREFIX/venv.new" && mv -T "$PREFIX/venv.new" "$PREFIX/venv"
  touched "${ROLE_SERVICES[@]}"  # every unit runs code from the venv (the servers' readiness probes too)
fi
jars_id="$(sha256sum "$REPO/deploy/kafka/jars.manifest" | cut -c1-12)"
if [ "$ROLE" = server ] && [ "$(readlink "$PREFIX/kafka/lib" 2>/dev/null)" != "lib-$jars_id" ]; then
  rm -rf "$PREFIX/kafka/lib-$jars_id" && cp -r "$KAFKA_LIB" "$PREFIX/kafka/lib-$jars_id"
  (cd "$PREFIX/kafka/lib-$jars_id" && sha256sum --quiet --strict -c "$REPO/deploy/kafka/jars.manifest")
  chmod -R a+rX "$PREFIX/kafka/lib-$jars_id"
  [ -L "$PREFIX/kafka/lib" ] || rm -rf "$PREFIX/kafka/lib"
  rm -rf "$PREFIX/kafka/lib.new"; ln -sfn "lib-$jars_id" "$PREFIX/kafka/lib.new" && mv -T "$PREFIX/kafka/lib.new" "$PREFIX/kafka/lib"
  touched food-orders-zookeeper.service food-orders-kafka.service
  say "    Kafka jars installed ($(wc -l <"$REPO/deploy/kafka/jars.manifest"))"
fi
put "$REPO/README.md" "$PREFIX/README.md" 0644 root:root
cat >"$TMP/food-orders" <<EOF
#!/bin/sh
# food-orders (bin/pipeline of a checkout) reading this host's installed configuration
export PIPELINE_ENV_FILE=$ETC/food-orders.env PIPELINE_SUPERVISORD_CONF=$ETC/supervisord.conf PIPELINE_HOST_INSTALL=1
exec $PREFIX/venv/bin/food-orders "\$@"
EOF
put "$TMP/food-orders" "$PREFIX/bin/food-orders" 0755 root:root
cat >"$TMP/supervisorctl" <<EOF
#!/bin/sh
# supervisorctl of this host's supervisord (with the pipeline's \`scale\` command)
export PIPELINE_ENV_FILE=$ETC/food-orders.env
exec $PREFIX/venv/bin/supervisorctl -c $ETC/supervisord.conf "\$@"
EOF
put "$TMP/supervisorctl" "$PREFIX/bin/supervisorctl" 0755 root:root
printf '# food-orders: supervisorctl and food-orders on PATH for operators (members of the group %s)\nPATH="%s/bin:$PATH"\n' \
  "$APP_USER" "$PREFIX" >"$TMP/profile"
put "$TMP/profile" /etc/profile.d/food-orders.sh 0644 root:root
ln -sfn "$PREFIX/bin/food-orders" /usr/local/bin/food-orders

say "==> configuration in $ETC"
if [ -f "$ETC/food-orders.env" ]; then
  cp "$ETC/food-orders.env" "$TMP/env"
  say "    food-orders.env kept (passwords and settings)"
elif [ "$ROLE" = server ]; then
  password="$(/usr/bin/python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
  { sed -e "s|CHANGE_ME|$password|" -e "s|^PIPELINE_STATE_DIR=.*|PIPELINE_STATE_DIR=$LIB|" "$REPO/.env.example"
    printf '\n# Installed host: where the Kafka jars are (scale-down uses Kafka'"'"'s Admin client from them)\nPIPELINE_PREFIX=%s\n' "$PREFIX"
  } >"$TMP/env"
  say "    wrote food-orders.env with a generated database password (0640 root:$APP_USER)"
else
  { sed -e "s|^PIPELINE_STATE_DIR=.*|PIPELINE_STATE_DIR=$LIB|" "$REPO/.env.example"
    printf '\n# Installed worker host: Kafka and PostgreSQL are another host'"'"'s (install.sh --join)\nPIPELINE_PREFIX=%s\n' "$PREFIX"
  } >"$TMP/env"
fi
: >"$TMP/env.set"
[ "$ROLE" = server ] || echo "PIPELINE_ROLE=worker" >>"$TMP/env.set"
[ -z "$LISTEN" ] || echo "PIPELINE_LISTEN_ADDRESS=$LISTEN" >>"$TMP/env.set"
if [ -n "$JOIN" ]; then  # the bundle's connection settings and credentials replace the old ones
  grep -E '^[A-Z_]+=' "$BUNDLE/worker.env" >>"$TMP/env.set"
  put "$BUNDLE/ca.pem" "$TLS/ca.pem" 0644 root:root "$PROGRAMS"
  say "    joined: $(sed -n 's/^KAFKA_BOOTSTRAP_SERVERS=//p' "$BUNDLE/worker.env") as $(sed -n 's/^KAFKA_SASL_USERNAME=//p' "$BUNDLE/worker.env"), CA in $TLS/ca.pem"
fi
merge_env "$TMP/env" "$TMP/env.set" >"$TMP/env.new"
put "$TMP/env.new" "$ETC/food-orders.env" 0640 "root:$APP_USER" "$PROGRAMS"
chmod 0640 "$ETC/food-orders.env"; chown "root:$APP_USER" "$ETC/food-orders.env"
render "$REPO/deploy/host/supervisord.conf" >"$TMP/supervisord.conf"
put "$TMP/supervisord.conf" "$ETC/supervisord.conf" 0644 root:root "$PROGRAMS"
# The consumer count is the operators' (supervisorctl scale writes it): the rest of the file follows the
# template, so an upgrade can change commands and settings while the count stays.
count="$(sed -n 's/^numprocs *= *\([0-9]*\).*/\1/p' "$ETC/conf.d/consumer.conf" 2>/dev/null | head -1 || true)"
render "$REPO/deploy/host/consumer.conf" | sed "s/^numprocs = 1\$/numprocs = ${count:-1}/" >"$TMP/consumer.conf"
put "$TMP/consumer.conf" "$ETC/conf.d/consumer.conf" 0640 "$APP_USER:$APP_USER" "$PROGRAMS"
say "    conf.d/consumer.conf: numprocs=${count:-1}${count:+ (kept)}"
if [ "$ROLE" = server ]; then
  R_DATA_DIR="$LIB/zookeeper/data" render "$REPO/deploy/kafka/zookeeper.properties" >"$TMP/zk"
  put "$TMP/zk" "$ETC/zookeeper.properties" 0644 root:root food-orders-zookeeper.service
  { R_DATA_DIR="$LIB/kafka/data" render "$REPO/deploy/kafka/server-zookeeper.properties"; echo
    cat "$REPO/deploy/kafka/server-common.properties"
    if [ -n "$LISTEN" ]; then echo; render "$REPO/deploy/kafka/server-listen.properties"; fi; } >"$TMP/kafka"
  put "$TMP/kafka" "$ETC/kafka.properties" 0644 root:root food-orders-kafka.service
  put "$REPO/deploy/host/log4j.properties" "$ETC/log4j.properties" 0644 root:root food-orders-zookeeper.service food-orders-kafka.service
fi
[ -z "$LISTEN" ] || server_tls

if [ "$ROLE" = server ]; then
  say "==> PostgreSQL cluster in $LIB/postgresql"
  if [ ! -f "$LIB/postgresql/PG_VERSION" ]; then
    (cd / && runuser -u postgres -- "$PG_BIN/initdb" -D "$LIB/postgresql" -U postgres --auth-local=peer \
      --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$TMP/initdb.log" 2>&1) \
      || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
    printf '\n# food-orders pipeline\nshared_buffers = 256MB\nmax_connections = 100\nlog_min_messages = warning\n' \
      >>"$LIB/postgresql/postgresql.conf"
    touched food-orders-postgresql.service
    say "    initialized"
  else
    say "    kept ($(cat "$LIB/postgresql/PG_VERSION"))"
  fi
  url="$(env_value DATABASE_URL '')"
  db_user="$(printf '%s' "$url" | sed -n 's|^postgresql://\([^:@]*\).*|\1|p')"
  db_name="${url##*/}"
  # Worker hosts: only the worker role, only the orders database, only over TLS with its SCRAM
  # password. Every other remote connection finds no line and is refused.
  hba="$LIB/postgresql/pg_hba.conf"
  sed '/^# BEGIN food-orders workers/,/^# END food-orders workers/d' "$hba" >"$TMP/hba"
  if [ -n "$LISTEN" ]; then
    printf '# BEGIN food-orders workers (install.sh --listen %s)\nhostssl %s %s 0.0.0.0/0 scram-sha-256\nhostssl %s %s ::/0 scram-sha-256\n# END food-orders workers\n' \
      "$LISTEN" "$db_name" "$WORKER_DB_ROLE" "$db_name" "$WORKER_DB_ROLE" >>"$TMP/hba"
  fi
  put "$TMP/hba" "$hba" 0600 postgres:postgres food-orders-postgresql.service
fi

say "==> systemd units"
for u in food-orders.target "${ROLE_SERVICES[@]}"; do
  render "$REPO/deploy/systemd/$u" >"$TMP/$u"
  put "$TMP/$u" "$UNITS/$u" 0644 root:root "$u"
done
systemctl daemon-reload
systemctl enable -q food-orders.target "${ROLE_SERVICES[@]}"

if [ "$ROLE" = server ]; then
  say "==> database role and database (password from food-orders.env)"
  # A changed PostgreSQL unit (say a new port) must run before psql talks to it.
  if [ -n "${restart[food-orders-postgresql.service]:-}" ]; then
    systemctl try-restart food-orders-postgresql.service; unset 'restart[food-orders-postgresql.service]'
  fi
  systemctl start food-orders-postgresql.service
  export PGPASSWORD_NEW; PGPASSWORD_NEW="$(printf '%s' "$url" | sed -n 's|^postgresql://[^:@]*:\([^@]*\)@.*|\1|p')"
  if (cd / && PGPASSWORD="$PGPASSWORD_NEW" "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$db_user" -d "$db_name" \
        -qtAXc 'SELECT 1' >/dev/null 2>&1); then
    say "    $db_user@$db_name answers with the password of food-orders.env"
  else
    # The password reaches psql through its environment (\getenv), never its command line (ps).
    (cd / && runuser -u postgres --whitelist-environment=PGPASSWORD_NEW -- "$PG_BIN/psql" -h /run/food-orders-postgresql \
      -p "$PG_PORT" -d postgres -qtAX -v ON_ERROR_STOP=1 -v user="$db_user" -v db="$db_name" >/dev/null) <<'SQL'
\getenv pass PGPASSWORD_NEW
SELECT format('CREATE ROLE %I LOGIN', :'user') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'user', :'pass') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user') WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
    say "    role $db_user and database $db_name ready"
  fi
  unset PGPASSWORD_NEW
fi

say "==> starting food-orders.target"
if systemctl is-active -q food-orders.target && [ ${#restart[@]} -gt 0 ]; then
  say "    restarting what changed: ${!restart[*]}"
  systemctl try-restart "${!restart[@]}"  # an upgrade: only units whose code or config changed
fi
systemctl start food-orders.target
for u in "${ROLE_SERVICES[@]}"; do
  systemctl is-active -q "$u" || { systemctl status --no-pager "$u" >&2 || true; die "$u did not start (journalctl -u $u)"; }
done
# Old releases go only now, once the new one runs: the current and the one before stay (a rollback).
for old in "$PREFIX"/releases/*; do
  case "releases/${old##*/}/venv" in "$(readlink "$PREFIX/venv")"|"$previous") ;; *) rm -rf "$old" ;; esac
done
for old in "$PREFIX"/kafka/lib-*; do [ "${old##*/}" = "$(readlink "$PREFIX/kafka/lib")" ] || rm -rf "$old"; done
if [ -n "$LISTEN" ]; then
  serve_workers
fi
[ "$changed" = 1 ] || say "    nothing changed: configuration, password, data and consumer count as they were"
say ""
systemctl list-units --no-pager --no-legend 'food-orders*' | sed 's/^/    /'
say ""
say "installed in $PREFIX; config $ETC; data $LIB; logs $LOG and journalctl -u 'food-orders*'"
say "operators: usermod -aG $APP_USER NAME, then (new login) supervisorctl status / food-orders status"
