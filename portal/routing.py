"""Websocket URL routes."""

from django.urls import path

from portal.consumers import EventsConsumer

websocket_urlpatterns = [
    path("ws/events/", EventsConsumer.as_asgi(), name="ws-events"),
]
