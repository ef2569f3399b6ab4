#!/bin/sh
# Write PgBouncer's configuration from the environment, then run it in the foreground.
#
# The connection settings come from .envs/.production/.postgres, the file the postgres
# service reads too, so there is one copy of the password. PgBouncer's own knobs come
# from PGBOUNCER_* variables (docker-compose.production.yml sets them, with the reasons).
# Reference: https://www.pgbouncer.org/config.html
set -eu

: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set (.envs/.production/.postgres)}"
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
POSTGRES_HOST=${POSTGRES_HOST:-postgres}
POSTGRES_PORT=${POSTGRES_PORT:-5432}
CONFIG_DIR=${PGBOUNCER_CONFIG_DIR:-/etc/pgbouncer}

# These values go into pgbouncer.ini unquoted, where a space, "=" or ";" would change
# what the line means. Refuse them instead of writing a file that says something else.
plain() {  # $1: a variable's name, $2: its value
    case $2 in
        '' | *[!A-Za-z0-9_.-]*)
            echo "pgbouncer: $1 must be letters, digits, '_', '.' or '-', got '$2'" >&2
            exit 1
            ;;
    esac
}
plain POSTGRES_USER "$POSTGRES_USER"
plain POSTGRES_DB "$POSTGRES_DB"
plain POSTGRES_HOST "$POSTGRES_HOST"
plain POSTGRES_PORT "$POSTGRES_PORT"

# userlist.txt: "user" "password", each field in double quotes, a double quote inside
# a field written twice. The plain-text password lets PgBouncer answer the clients'
# SCRAM and run SCRAM itself towards Postgres. Only this user may read the file.
quote() {
    printf '"%s"' "$(printf '%s' "$1" | sed 's/"/""/g')"
}
umask 077
printf '%s %s\n' "$(quote "$POSTGRES_USER")" "$(quote "$POSTGRES_PASSWORD")" > "$CONFIG_DIR/userlist.txt"

cat > "$CONFIG_DIR/pgbouncer.ini" <<INI
[databases]
; Clients ask for $POSTGRES_DB on PgBouncer and get it on $POSTGRES_HOST.
$POSTGRES_DB = host=$POSTGRES_HOST port=$POSTGRES_PORT dbname=$POSTGRES_DB

[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 6432
; TCP only: no Unix socket directory to create and own.
unix_socket_dir =

; Postgres 14+ stores passwords as SCRAM secrets; clients authenticate to PgBouncer
; the same way, against userlist.txt.
auth_type = scram-sha-256
auth_file = $CONFIG_DIR/userlist.txt
; The admin console (psql -p 6432 -U $POSTGRES_USER pgbouncer: SHOW POOLS, SHOW CLIENTS).
admin_users = $POSTGRES_USER
stats_users = $POSTGRES_USER

; A server connection belongs to a client for one transaction, then goes back to the
; pool. What that forbids (session SET, advisory locks, LISTEN, WITH HOLD cursors,
; prepared statements) is listed in docs/database-connections.md; Django is told by
; DATABASE_TRANSACTION_POOLING=true in the same env file.
pool_mode = transaction
; Server connections per database and user: the most Postgres sees from this service.
default_pool_size = ${PGBOUNCER_DEFAULT_POOL_SIZE:-12}
; Client connections PgBouncer accepts: cheap (a few kB each), so generous.
max_client_conn = ${PGBOUNCER_MAX_CLIENT_CONN:-500}
; Nothing to reset: in transaction mode no session state outlives a transaction.
; (DISCARD ALL, the default, is for session mode.)
server_reset_query =

; Every connect would be a log line (the healthcheck's too); SHOW CLIENTS lists them.
log_connections = 0
log_disconnections = 0
INI

exec pgbouncer "$CONFIG_DIR/pgbouncer.ini"
