#!/bin/sh
# Like the official image: "redis-server ARGS" runs as the redis user in /data, reachable
# from other containers (protected mode off when no config file is given).
set -eu
case "${1:-}" in -*) set -- redis-server "$@" ;; esac
if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
    chown -R redis:redis /data
    exec gosu redis "$0" "$@"
fi
if [ "${1:-}" = redis-server ]; then
    shift
    exec redis-server --protected-mode no "$@"
fi
exec "$@"
