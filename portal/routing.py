"""Websocket URL routes."""

from django.urls import path

from compute.consoles import SerialConsoleConsumer, SerialTerminalConsumer, VncProxyConsumer
from portal.consumers import EventsConsumer

websocket_urlpatterns = [
    path("ws/events/", EventsConsumer.as_asgi(), name="ws-events"),
    path("ws/instances/<uuid:uuid>/serial/", SerialConsoleConsumer.as_asgi(), name="ws-serial"),
    path("ws/instances/<uuid:uuid>/vnc/", VncProxyConsumer.as_asgi(), name="ws-vnc"),
    path("ws/instances/<uuid:uuid>/terminal/", SerialTerminalConsumer.as_asgi(), name="ws-terminal"),
]
