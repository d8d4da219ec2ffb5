"""The REST API of compute: serializers, views by resource, and the routes in ``urls``."""
