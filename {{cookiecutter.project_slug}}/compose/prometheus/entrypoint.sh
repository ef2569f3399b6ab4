#!/bin/sh
# Start Prometheus on a copy of its configuration completed from the environment.
#
# Prometheus cannot read the scrape credentials from the environment, and the copy
# Django checks lives in METRICS_BASIC_AUTH (.envs/.<env>/.metrics, read by both
# services). So this script copies /etc/prometheus (this directory, mounted read-only)
# to a tmpfs, writes the password to a file there (basic_auth.password_file) and puts
# the user name and METRICS_TARGET in place of __METRICS_USERNAME__ and
# __METRICS_TARGET__. The password never reaches a disk or a command line.
# After editing the rules: docker compose restart prometheus.
set -eu

: "${METRICS_BASIC_AUTH:?METRICS_BASIC_AUTH must be set (user:password, .envs/.<env>/.metrics)}"
: "${METRICS_TARGET:?METRICS_TARGET must be set (host:port of the web process)}"
CONFIG_DIR=${PROMETHEUS_CONFIG_DIR:-/etc/prometheus}
RUN_DIR=${PROMETHEUS_RUN_DIR:-/run/prometheus}

case $METRICS_BASIC_AUTH in
    *:*) ;;
    *) echo "prometheus: METRICS_BASIC_AUTH must be user:password" >&2; exit 1 ;;
esac
user=${METRICS_BASIC_AUTH%%:*}
password=${METRICS_BASIC_AUTH#*:}

# These two go into prometheus.yml as plain YAML words (and through sed): refuse
# anything that could change what the file says rather than write it. The password
# goes into a file of its own, byte for byte, so it may hold any character.
plain() {  # $1: what, $2: its value, $3: the characters allowed
    case $2 in
        '' | *[!$3]*)
            echo "prometheus: $1 may only hold the characters [$3], got '$2'" >&2
            exit 1
            ;;
    esac
}
plain "the user name of METRICS_BASIC_AUTH" "$user" 'A-Za-z0-9_.-'
plain METRICS_TARGET "$METRICS_TARGET" 'A-Za-z0-9_.:-'

umask 077
mkdir -p "$RUN_DIR"
cp "$CONFIG_DIR"/*.yml "$RUN_DIR"/
printf '%s' "$password" > "$RUN_DIR/metrics-password"
sed -e "s/__METRICS_USERNAME__/$user/" -e "s/__METRICS_TARGET__/$METRICS_TARGET/" \
    "$CONFIG_DIR/prometheus.yml" > "$RUN_DIR/prometheus.yml"

# "check": validate the completed configuration and its rules, start nothing.
if [ "${1:-}" = check ]; then
    exec promtool check config "$RUN_DIR/prometheus.yml"
fi
exec prometheus --config.file="$RUN_DIR/prometheus.yml" "$@"
