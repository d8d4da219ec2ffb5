"""The REST API of tenants: serializers, views and the routes in ``urls``."""
