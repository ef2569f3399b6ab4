#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
{%- if cookiecutter.opentelemetry == "yes" %}
        from config import telemetry

        # runserver is the web process; manage.py outbox_relay is outbox-relay.
        command = sys.argv[1] if len(sys.argv) > 1 else "help"
        telemetry.setup("web" if command == "runserver" else command.replace("_", "-"))
{%- endif %}
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as error:
        # A setting the environment must provide is missing or wrong: the message says
        # which and how to fix it; a traceback through the settings module would not.
        sys.exit(f"{type(error).__name__}: {error}")
