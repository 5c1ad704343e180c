#!/usr/bin/env bash
# Install the food-orders pipeline on this host as systemd services, offline, from a checkout that
# bin/setup prepared (Kafka jars, a wheelhouse of the pinned Python packages).
#
#   deploy/install.sh [--prefix DIR]   install, or upgrade in place (config, password, data and the
#                                      consumer count are kept); start food-orders.target
#   deploy/install.sh --remove         stop and remove units and code; keep config, data and logs
#   deploy/install.sh --purge          --remove, then delete config, data, logs and the users (says what first)
#
# Layout: code + venv in /opt/food-orders, config in /etc/food-orders (food-orders.env 0640
# root:food-orders), state in /var/lib/food-orders, logs in /var/log/food-orders and the journal,
# supervisor socket in /run/food-orders (0770, group food-orders = the operators).
set -euo pipefail

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

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }
usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
    --remove) MODE=remove; shift ;;
    --purge) MODE=purge; shift ;;
    -h|--help) usage 0 ;;
    *) printf 'install.sh: error: unknown argument %q\n' "$1" >&2; usage 2 ;;
  esac
done
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path, got $PREFIX" ;; esac
PREFIX="${PREFIX%/}"

[ "$(id -u)" = 0 ] || die "run as root: it creates system users, $ETC, $LIB and systemd units"
[ -d /run/systemd/system ] || die "systemd is not running as PID 1 here: the units cannot be started"

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
  rm -rf "$prefix" /etc/profile.d/food-orders.sh /usr/local/bin/food-orders
  say "removed: units, $prefix, /usr/local/bin/food-orders, /etc/profile.d/food-orders.sh"
}
if [ "$MODE" = remove ]; then
  remove
  say "kept: $ETC (configuration, database password, consumer count), $LIB (data), $LOG (logs), users $APP_USER, $KAFKA_USER"
  exit 0
fi
if [ "$MODE" = purge ]; then
  say "purge deletes, after removing the units and code:"
  for d in "$LIB" "$LOG" "$ETC"; do
    [ -e "$d" ] && say "  $d ($(du -sh "$d" 2>/dev/null | cut -f1): $(case $d in "$LIB") echo "Kafka topics, ZooKeeper, the PostgreSQL cluster with every order" ;; "$LOG") echo logs ;; *) echo "configuration, database password, consumer count" ;; esac))"
  done
  say "  users $APP_USER and $KAFKA_USER, group $APP_USER"
  remove
  rm -rf "$LIB" "$LOG" "$ETC"
  for u in "$APP_USER" "$KAFKA_USER"; do id "$u" >/dev/null 2>&1 && userdel "$u"; done
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
java_major() { /usr/bin/java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print v[1]; exit}'; }
[ -x /usr/bin/java ] || die "no Java runtime at /usr/bin/java: apt-get install openjdk-17-jre-headless"
major="$(java_major || true)"
[ -n "$major" ] || die "/usr/bin/java does not run: apt-get install openjdk-17-jre-headless"
[ "$major" -ge 17 ] || die "Java 17 or newer needed at /usr/bin/java, found Java $major"
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -n "$PG_BIN" ] && [ -x "$PG_BIN/postgres" ] || die "no PostgreSQL server under /usr/lib/postgresql: apt-get install postgresql"
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || die "python3 with venv needed: apt-get install python3-venv"
id postgres >/dev/null 2>&1 || die "no postgres account (Debian's postgresql package creates it)"
WHEELHOUSE="$REPO/.local/wheelhouse"
KAFKA_LIB="$REPO/.local/kafka/lib"
[ "$(cat "$WHEELHOUSE/.requirements.sha256" 2>/dev/null)" = "$(sha256sum "$REPO/requirements-runtime.txt" | cut -d' ' -f1)" ] \
  || die "no wheelhouse for requirements-runtime.txt in $WHEELHOUSE: run bin/setup in the checkout first (on a machine with the package index)"
(cd "$KAFKA_LIB" 2>/dev/null && sha256sum --quiet --strict -c "$REPO/deploy/kafka/jars.manifest" >/dev/null 2>&1) \
  || die "Kafka jars missing or damaged in $KAFKA_LIB: run bin/setup in the checkout first"
"$REPO/.venv/bin/python" -c 'import setuptools' 2>/dev/null || die "the checkout's .venv is missing: run bin/setup first"
parent="$PREFIX"; while [ ! -e "$parent" ]; do parent="$(dirname "$parent")"; done
[ -d "$parent" ] && [ -w "$parent" ] || die "cannot write the prefix $PREFIX ($parent is not a writable directory)"

ZK_PORT="$(env_value PIPELINE_ZOOKEEPER_PORT 2181)"
KAFKA_PORT="$(env_value KAFKA_BOOTSTRAP_SERVERS 127.0.0.1:9092)"; KAFKA_PORT="${KAFKA_PORT##*:}"
PG_PORT="$(env_value DATABASE_URL postgresql://x@127.0.0.1:5433/orders)"; PG_PORT="${PG_PORT##*:}"; PG_PORT="${PG_PORT%%/*}"
for pp in "zookeeper:$ZK_PORT" "kafka:$KAFKA_PORT" "postgresql:$PG_PORT"; do
  port="${pp#*:}"
  pid="$(ss -Hltnp "sport = :$port" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)"
  if [ -n "$pid" ] && ! grep -q 'food-orders' "/proc/$pid/cgroup" 2>/dev/null; then
    die "port $port (${pp%%:*}) is already in use by pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo '?')); stop it or change the port in $ETC/food-orders.env"
  fi
done

# -- from here on the host changes -----------------------------------------------------------------
changed=0
trap 'say "install.sh: failed at line $LINENO; re-run after fixing the cause (every step is idempotent)" >&2' ERR
put() {  # put SRC DEST MODE OWNER: install a file only when its content or mode differs
  local src="$1" dest="$2" mode="$3" owner="$4"
  if ! cmp -s "$src" "$dest" 2>/dev/null; then
    install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$src" "$dest"; changed=1
  else
    chmod "$mode" "$dest"; chown "$owner" "$dest"
  fi
}
render() {  # render TEMPLATE: the template with @KEY@ and ${key} placeholders filled in, on stdout
  /usr/bin/python3 - "$1" <<'PY'
import os, string, sys
text = open(sys.argv[1]).read()
hardening = open(os.environ["R_HARDENING"]).read().split("\n", 1)[1].strip()
for key in ("PREFIX", "ZK_PORT", "KAFKA_PORT", "PG_PORT", "PG_BIN"):
    text = text.replace(f"@{key}@", os.environ[f"R_{key}"])
text = text.replace("@HARDENING@", hardening)
values = {"data_dir": os.environ.get("R_DATA_DIR", ""), "zookeeper_port": os.environ["R_ZK_PORT"],
          "kafka_port": os.environ["R_KAFKA_PORT"], "controller_port": "9093"}
sys.stdout.write(string.Template(text).safe_substitute(values))
PY
}
export R_PREFIX="$PREFIX" R_ZK_PORT="$ZK_PORT" R_KAFKA_PORT="$KAFKA_PORT" R_PG_PORT="$PG_PORT" R_PG_BIN="$PG_BIN" \
       R_HARDENING="$REPO/deploy/systemd/hardening.conf"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT

say "==> users: $APP_USER (programs; its group = operators), $KAFKA_USER (ZooKeeper, Kafka), postgres (PostgreSQL)"
getent group "$APP_USER" >/dev/null || groupadd --system "$APP_USER"
id "$APP_USER" >/dev/null 2>&1 || useradd --system --gid "$APP_USER" --home-dir "$LIB/pipeline" --no-create-home --shell /usr/sbin/nologin "$APP_USER"
getent group "$KAFKA_USER" >/dev/null || groupadd --system "$KAFKA_USER"
id "$KAFKA_USER" >/dev/null 2>&1 || useradd --system --gid "$KAFKA_USER" --home-dir "$LIB/kafka" --no-create-home --shell /usr/sbin/nologin "$KAFKA_USER"

say "==> directories"
install -d -m 0755 -o root -g root "$PREFIX" "$PREFIX/bin" "$PREFIX/releases" "$PREFIX/kafka" "$ETC" "$LIB"
install -d -m 0770 -o root -g "$APP_USER" "$ETC/conf.d"
install -d -m 0750 -o "$KAFKA_USER" -g "$KAFKA_USER" "$LIB/zookeeper" "$LIB/kafka"
install -d -m 0700 -o postgres -g postgres "$LIB/postgresql"
install -d -m 0750 -o "$APP_USER" -g "$APP_USER" "$LIB/pipeline"
install -d -m 2750 -o "$APP_USER" -g "$APP_USER" "$LOG"

say "==> code: the project and its pinned packages, offline from the checkout's wheelhouse"
source_id="$(cd "$REPO" && find pipeline pyproject.toml requirements-runtime.txt -type f ! -name '*.pyc' | sort | xargs sha256sum | sha256sum | cut -c1-12)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -1)"
release="$PREFIX/releases/$version-$source_id"
if [ ! -x "$release/venv/bin/supervisord" ]; then
  rm -rf "$release"
  "$REPO/.venv/bin/pip" wheel -q --disable-pip-version-check --no-deps --no-build-isolation --no-index -w "$TMP/wheel" "$REPO" >/dev/null
  /usr/bin/python3 -m venv "$release/venv"
  "$release/venv/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$WHEELHOUSE" "$TMP"/wheel/*.whl
  changed=1
  say "    installed release $version-$source_id"
else
  say "    release $version-$source_id already installed"
fi
if [ "$(readlink "$PREFIX/venv" 2>/dev/null)" != "releases/$version-$source_id/venv" ]; then
  ln -sfn "releases/$version-$source_id/venv" "$PREFIX/venv.new" && mv -T "$PREFIX/venv.new" "$PREFIX/venv"
  changed=1
fi
for old in $(ls -1t "$PREFIX/releases" | tail -n +3); do rm -rf "${PREFIX:?}/releases/$old"; done  # keep current + previous
if ! (cd "$PREFIX/kafka/lib" 2>/dev/null && sha256sum --quiet --strict -c "$REPO/deploy/kafka/jars.manifest" >/dev/null 2>&1); then
  rm -rf "$PREFIX/kafka/lib.new" && cp -r "$KAFKA_LIB" "$PREFIX/kafka/lib.new"
  rm -rf "$PREFIX/kafka/lib" && mv "$PREFIX/kafka/lib.new" "$PREFIX/kafka/lib"
  chmod -R a+rX "$PREFIX/kafka/lib"; changed=1
  say "    Kafka jars installed ($(wc -l <"$REPO/deploy/kafka/jars.manifest"))"
fi
put "$REPO/README.md" "$PREFIX/README.md" 0644 root:root
cat >"$TMP/food-orders" <<EOF
#!/bin/sh
# food-orders (bin/pipeline of a checkout) reading this host's installed configuration
PIPELINE_ENV_FILE=$ETC/food-orders.env PIPELINE_SUPERVISORD_CONF=$ETC/supervisord.conf PIPELINE_HOST_INSTALL=1 \\
  exec $PREFIX/venv/bin/food-orders "\$@"
EOF
put "$TMP/food-orders" "$PREFIX/bin/food-orders" 0755 root:root
cat >"$TMP/supervisorctl" <<EOF
#!/bin/sh
# supervisorctl of this host's supervisord (with the pipeline's \`scale\` command)
exec $PREFIX/venv/bin/supervisorctl -c $ETC/supervisord.conf "\$@"
EOF
put "$TMP/supervisorctl" "$PREFIX/bin/supervisorctl" 0755 root:root
printf '# food-orders: supervisorctl and food-orders on PATH for operators (members of the group %s)\nPATH="%s/bin:$PATH"\n' \
  "$APP_USER" "$PREFIX" >"$TMP/profile"
put "$TMP/profile" /etc/profile.d/food-orders.sh 0644 root:root
ln -sfn "$PREFIX/bin/food-orders" /usr/local/bin/food-orders

say "==> configuration in $ETC"
if [ -f "$ETC/food-orders.env" ]; then
  say "    food-orders.env kept (database password and settings)"
else
  password="$(/usr/bin/python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
  { sed -e "s|CHANGE_ME|$password|" -e "s|^PIPELINE_STATE_DIR=.*|PIPELINE_STATE_DIR=$LIB|" "$REPO/.env.example"
    printf '\n# Installed host: where the Kafka jars are (scale-down uses Kafka'"'"'s Admin client from them)\nPIPELINE_PREFIX=%s\n' "$PREFIX"
  } >"$TMP/env"
  install -m 0640 -o root -g "$APP_USER" "$TMP/env" "$ETC/food-orders.env"; changed=1
  say "    wrote food-orders.env with a generated database password (0640 root:$APP_USER)"
fi
chmod 0640 "$ETC/food-orders.env"; chown "root:$APP_USER" "$ETC/food-orders.env"
render "$REPO/deploy/host/supervisord.conf" >"$TMP/supervisord.conf"
put "$TMP/supervisord.conf" "$ETC/supervisord.conf" 0644 root:root
if [ -f "$ETC/conf.d/consumer.conf" ]; then
  say "    conf.d/consumer.conf kept ($(grep -E '^numprocs *=' "$ETC/conf.d/consumer.conf" | tr -d ' '))"
else
  render "$REPO/deploy/host/consumer.conf" >"$TMP/consumer.conf"
  install -m 0640 -o "$APP_USER" -g "$APP_USER" "$TMP/consumer.conf" "$ETC/conf.d/consumer.conf"; changed=1
fi
R_DATA_DIR="$LIB/zookeeper" render "$REPO/deploy/kafka/zookeeper.properties" >"$TMP/zk"
put "$TMP/zk" "$ETC/zookeeper.properties" 0644 root:root
{ R_DATA_DIR="$LIB/kafka" render "$REPO/deploy/kafka/server-zookeeper.properties"; echo
  cat "$REPO/deploy/kafka/server-common.properties"; } >"$TMP/kafka"
put "$TMP/kafka" "$ETC/kafka.properties" 0644 root:root
put "$REPO/deploy/host/log4j.properties" "$ETC/log4j.properties" 0644 root:root

say "==> PostgreSQL cluster in $LIB/postgresql"
if [ ! -f "$LIB/postgresql/PG_VERSION" ]; then
  runuser -u postgres -- "$PG_BIN/initdb" -D "$LIB/postgresql" -U postgres --auth-local=peer \
    --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$TMP/initdb.log" 2>&1 \
    || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
  printf '\n# food-orders pipeline\nshared_buffers = 256MB\nmax_connections = 100\nlog_min_messages = warning\n' \
    >>"$LIB/postgresql/postgresql.conf"
  changed=1
  say "    initialized"
else
  say "    kept ($(cat "$LIB/postgresql/PG_VERSION"))"
fi

say "==> systemd units"
for u in food-orders.target "${SERVICES[@]}"; do
  render "$REPO/deploy/systemd/$u" >"$TMP/$u"
  put "$TMP/$u" "$UNITS/$u" 0644 root:root
done
systemctl daemon-reload
systemctl enable -q food-orders.target "${SERVICES[@]}"

say "==> database role and database (password from food-orders.env)"
systemctl start food-orders-postgresql.service
url="$(env_value DATABASE_URL '')"
db_user="$(printf '%s' "$url" | sed -n 's|^postgresql://\([^:@]*\).*|\1|p')"
db_pass="$(printf '%s' "$url" | sed -n 's|^postgresql://[^:@]*:\([^@]*\)@.*|\1|p')"
db_name="${url##*/}"
runuser -u postgres -- "$PG_BIN/psql" -h /run/food-orders-postgresql -p "$PG_PORT" -d postgres -qtAX \
  -v ON_ERROR_STOP=1 -v user="$db_user" -v pass="$db_pass" -v db="$db_name" >/dev/null <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'user') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'user', :'pass') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user') WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL

say "==> starting food-orders.target"
if [ "$changed" = 1 ] && systemctl is-active -q food-orders.service; then
  systemctl restart food-orders.target   # an upgrade: the new code and config take effect
else
  systemctl start food-orders.target
fi
for u in "${SERVICES[@]}"; do
  systemctl is-active -q "$u" || { systemctl status --no-pager "$u" >&2 || true; die "$u did not start (journalctl -u $u)"; }
done
[ "$changed" = 1 ] || say "    nothing changed: configuration, password, data and consumer count as they were"
say ""
systemctl list-units --no-pager --no-legend 'food-orders*' | sed 's/^/    /'
say ""
say "installed in $PREFIX; config $ETC; data $LIB; logs $LOG and journalctl -u 'food-orders*'"
say "operators: usermod -aG $APP_USER NAME, then (new login) supervisorctl status / food-orders status"
