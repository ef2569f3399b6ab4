"""WSGI entry point for gunicorn: ``gunicorn config.wsgi``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
{%- if cookiecutter.opentelemetry == "yes" %}

# Before the application loads its middleware, so that every request gets a span. gunicorn
# imports this module in each worker after the fork (unless --preload: keep it off).
from config import telemetry

telemetry.setup("web")
{%- endif %}

application = get_wsgi_application()
