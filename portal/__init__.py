"""The Nubis Django project: settings, URL root, ASGI routing and the Celery app."""

from portal.celery import app as celery_app

__all__ = ["celery_app"]
