# Sourced by deploy/install.sh: what a host needs to serve worker hosts (--listen) and what a worker
# checks of the bundle it joins with (--join). The functions use install.sh's variables and helpers
# (die, say, put, touched, env_value; ETC, TLS, TMP, LISTEN, JOIN, BUNDLE, ...).

check_bundle() {  # the bundle of --join, unpacked into $BUNDLE: refused with one line unless usable
  [ -r "$JOIN" ] || die "--join $JOIN: no such file (copy worker-bundle.tar from the Kafka host's /etc/food-orders)"
  tar -xf "$JOIN" -C "$BUNDLE" worker.env ca.pem 2>/dev/null \
    || die "--join $JOIN: not a worker bundle (worker.env and ca.pem expected; install.sh --listen writes it)"
  openssl x509 -in "$BUNDLE/ca.pem" -noout 2>/dev/null || die "--join $JOIN: ca.pem is not a certificate"
  openssl x509 -in "$BUNDLE/ca.pem" -noout -checkend 0 >/dev/null 2>&1 \
    || die "--join $JOIN: the CA certificate expired on $(openssl x509 -in "$BUNDLE/ca.pem" -noout -enddate | cut -d= -f2): re-run install.sh on the Kafka host and take its new bundle"
  for key in KAFKA_BOOTSTRAP_SERVERS KAFKA_SASL_USERNAME KAFKA_SASL_PASSWORD DATABASE_URL; do
    grep -q "^$key=." "$BUNDLE/worker.env" || die "--join $JOIN: worker.env has no $key"
  done
  # Static group membership names each consumer {hostname}-consumer_NN: two hosts of one name fence each other.
  source_host="$(sed -n 's/^# food-orders worker settings from \([^ ]*\) .*/\1/p' "$BUNDLE/worker.env")"
  [ "$source_host" != "$(hostname)" ] || die "--join $JOIN: this host is named $(hostname), like the Kafka host: give each host its own hostname (consumers are known to the group by it)"
}

server_tls() {  # the host's CA and the servers' certificate for --listen, made or renewed when needed
  local host; host="$(hostname)"
  if [ ! -s "$TLS/ca.key" ] || ! openssl x509 -in "$TLS/ca.pem" -noout -checkend "$RENEW_S" >/dev/null 2>&1; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=food-orders CA $host" \
      -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null || die "openssl could not make the CA"
    install -m 0600 -o root -g root "$TMP/ca.key" "$TLS/ca.key"
    install -m 0644 -o root -g root "$TMP/ca.pem" "$TLS/ca.pem"
    rm -f "$TLS/server.pem"  # signed by the old CA
    say "    made the CA $TLS/ca.pem (10 years): worker hosts need the new bundle"
  fi
  local match; match="$(openssl x509 -in "$TLS/server.pem" -noout -checkip "$LISTEN" 2>/dev/null || true)"
  if openssl x509 -in "$TLS/server.pem" -noout -checkend "$RENEW_S" >/dev/null 2>&1 \
     && [ "$match" = "IP $LISTEN does match certificate" ]; then
    return 0
  fi
  printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\nbasicConstraints=CA:FALSE\n' \
    "$LISTEN" "$host" >"$TMP/ext.cnf"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$host" -keyout "$TMP/server.key" \
    -out "$TMP/server.csr" 2>/dev/null || die "openssl could not make the server key"
  openssl x509 -req -in "$TMP/server.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days 825 -extfile "$TMP/ext.cnf" -out "$TMP/server.pem" 2>/dev/null || die "openssl could not sign the server certificate"
  cat "$TMP/server.key" "$TMP/server.pem" >"$TMP/kafka.pem"
  install -m 0640 -o root -g "$KAFKA_USER" "$TMP/kafka.pem" "$TLS/kafka.pem"
  install -m 0640 -o root -g postgres "$TMP/server.key" "$TLS/postgresql.key"
  install -m 0644 -o root -g root "$TMP/server.pem" "$TLS/postgresql.pem"
  install -m 0644 -o root -g root "$TMP/server.pem" "$TLS/server.pem"
  touched food-orders-kafka.service food-orders-postgresql.service
  say "    server certificate for $LISTEN and $host (825 days, renewed by an install within 30 days of its end)"
}

serve_workers() {  # after the servers run: migrations as the owner, the worker role, the Kafka user, the bundle
  secrets="$ETC/worker-credentials.env"  # the worker passwords, kept from install to install
  if [ ! -s "$secrets" ]; then
    kafka_pw="$(/usr/bin/python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
    db_pw="$(/usr/bin/python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
    [ ${#kafka_pw} -ge 32 ] && [ ${#db_pw} -ge 32 ] || die "could not generate the worker passwords"
    (umask 077; printf 'WORKER_KAFKA_PASSWORD=%s\nWORKER_DB_PASSWORD=%s\n' "$kafka_pw" "$db_pw" >"$secrets")
  fi
  chmod 0600 "$secrets"; chown root:root "$secrets"
  WORKER_KAFKA_PASSWORD="$(sed -n 's/^WORKER_KAFKA_PASSWORD=//p' "$secrets")"
  WORKER_DB_PASSWORD="$(sed -n 's/^WORKER_DB_PASSWORD=//p' "$secrets")"
  [ -n "$WORKER_KAFKA_PASSWORD" ] && [ -n "$WORKER_DB_PASSWORD" ] || die "$secrets lacks a password: delete it and install again (workers then need the new bundle)"
  # Migrations run as the schema's owner, here; the worker role may write orders, never change the schema.
  (cd / && runuser -u "$APP_USER" -- "$PREFIX/bin/food-orders" migrate >/dev/null) || die "migrations failed: $PREFIX/bin/food-orders migrate"
  export PGPASSWORD_WORKER="$WORKER_DB_PASSWORD"
  (cd / && runuser -u postgres --whitelist-environment=PGPASSWORD_WORKER -- "$PG_BIN/psql" -h /run/food-orders-postgresql \
    -p "$PG_PORT" -d "$db_name" -qtAX -v ON_ERROR_STOP=1 -v role="$WORKER_DB_ROLE" -v db="$db_name" -v owner="$db_user" >/dev/null) <<'SQL'
\getenv pass PGPASSWORD_WORKER
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', :'role', :'pass') \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', :'db', :'role') \gexec
SELECT format('GRANT USAGE ON SCHEMA public TO %I', :'role') \gexec
SELECT format('GRANT USAGE, CREATE ON SCHEMA public TO %I', :'owner') \gexec
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SELECT format('GRANT SELECT ON ALL TABLES IN SCHEMA public TO %I', :'role') \gexec
SELECT format('GRANT INSERT, UPDATE ON orders, customer_stats TO %I', :'role') \gexec
SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public GRANT SELECT ON TABLES TO %I', :'owner', :'role') \gexec
SQL
  unset PGPASSWORD_WORKER
  say "    PostgreSQL role $WORKER_DB_ROLE: reads every table, writes orders and customer_stats, changes no schema"
  (cd / && PIPELINE_ENV_FILE="$ETC/food-orders.env" WORKER_KAFKA_PASSWORD="$WORKER_KAFKA_PASSWORD" \
    "$PREFIX/venv/bin/food-orders-server" grant-worker --user "$WORKER_KAFKA_USER" | sed 's/^/    /') \
    || die "could not set the Kafka user $WORKER_KAFKA_USER and its ACLs (journalctl -u food-orders-kafka.service)"
  host="$LISTEN"; [[ "$LISTEN" == *:* ]] && host="[$LISTEN]"
  mkdir -p "$TMP/bundle"
  cp "$TLS/ca.pem" "$TMP/bundle/ca.pem"
  (umask 077; cat >"$TMP/bundle/worker.env" <<EOF
# food-orders worker settings from $(hostname) (install.sh --listen $LISTEN); for install.sh --role worker --join
KAFKA_BOOTSTRAP_SERVERS=$host:$EXTERNAL_PORT
KAFKA_SECURITY_PROTOCOL=SASL_SSL
KAFKA_SASL_MECHANISM=SCRAM-SHA-512
KAFKA_SASL_USERNAME=$WORKER_KAFKA_USER
KAFKA_SASL_PASSWORD=$WORKER_KAFKA_PASSWORD
KAFKA_SSL_CA_LOCATION=$TLS/ca.pem
DATABASE_URL=postgresql://$WORKER_DB_ROLE:$WORKER_DB_PASSWORD@$host:$PG_PORT/$db_name?sslmode=verify-full&sslrootcert=$TLS/ca.pem
KAFKA_TOPIC=$(env_value KAFKA_TOPIC food-orders)
KAFKA_DLQ_TOPIC=$(env_value KAFKA_DLQ_TOPIC food-orders.dlq)
KAFKA_PARTITIONS=$(env_value KAFKA_PARTITIONS 3)
CONSUMER_GROUP_ID=$(env_value CONSUMER_GROUP_ID order-processors)
EOF
  )
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$TMP/bundle" -cf "$TMP/worker-bundle.tar" worker.env ca.pem
  put "$TMP/worker-bundle.tar" "$ETC/worker-bundle.tar" 0600 root:root
  say "    $ETC/worker-bundle.tar (0600, holds the worker passwords): copy it to a worker host, then there"
  say "    deploy/install.sh --role worker --join worker-bundle.tar"
}
