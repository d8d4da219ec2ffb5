"""Test settings: the real settings, with connections closed after each use.

Channels runs database work in executor threads; persistent connections there would outlive
each test and block the teardown of the test database.
"""

from portal.settings import *  # noqa: F403
from portal.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 0

# Tests create many users; the real hasher's deliberate slowness buys nothing here.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
