"""Test settings: the real settings, with connections closed after each use.

Channels runs database work in executor threads; persistent connections there would outlive
each test and block the teardown of the test database.
"""

from portal.settings import *  # noqa: F403
from portal.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 0

# Tests create many users; the real hasher's deliberate slowness buys nothing here.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The suite makes many quick API calls as few users (the isolation harness walks every route for
# every persona): limits high enough never to trip. Rate-limit tests set low ones themselves.
NUBIS_API_RATE_TOKEN = "1000000/min"
NUBIS_API_RATE_USER = "1000000/min"
NUBIS_API_RATE_ANON = "1000000/min"
