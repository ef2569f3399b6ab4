#!/bin/sh
# Turn the official image's RABBITMQ_DEFAULT_* variables into rabbitmq.conf, then run the
# broker in the foreground as the rabbitmq user. RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS is read
# by rabbitmq-server itself.
set -eu
if [ "$(id -u)" = 0 ]; then
    {
        echo "loopback_users = none"
        echo "listeners.tcp.default = 5672"
        echo "management.tcp.port = 15672"
        [ -n "${RABBITMQ_DEFAULT_USER:-}" ] && echo "default_user = $RABBITMQ_DEFAULT_USER"
        [ -n "${RABBITMQ_DEFAULT_PASS:-}" ] && echo "default_pass = $RABBITMQ_DEFAULT_PASS"
        [ -n "${RABBITMQ_DEFAULT_VHOST:-}" ] && echo "default_vhost = $RABBITMQ_DEFAULT_VHOST"
        true
    } > /etc/rabbitmq/rabbitmq.conf
    chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /etc/rabbitmq
    exec gosu rabbitmq "$0" "$@"
fi
exec "$@"
