"""Django settings for Nubis; every value comes from the environment through portal.config."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

from portal import config, stores

BASE_DIR = config.BASE_DIR
DATA_DIR = config.data_dir()

SECRET_KEY = config.secret_key(DATA_DIR)
DEBUG = config.env_bool("DEBUG", False)
ALLOWED_HOSTS = config.env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = config.env_list("CSRF_TRUSTED_ORIGINS", [])

DATABASE_URL = config.env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'nubis.sqlite3'}")
DATABASES = {"default": config.database_from_url(DATABASE_URL)}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # A database host that does not answer (rather than refuses) fails a connection in seconds,
    # which the API answers 503 (portal.api_errors), instead of holding the request for minutes.
    DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = config.redis_url()
LIBVIRT_URI = config.env_str("LIBVIRT_URI", "qemu:///system")
# The compute host this process runs on; its Celery queue is "host.<name>".
NUBIS_HOST_NAME = config.env_str("NUBIS_HOST_NAME", socket.gethostname())
# The host's address on the network the compute hosts share (the underlay of tenant overlays, the
# path of live migrations), and the libvirt URI peers migrate to ({address} is replaced). A host
# without an address is a lone host: its tenant networks stay on it and nothing migrates to it.
NUBIS_HOST_ADDRESS = config.env_ipv4("NUBIS_HOST_ADDRESS")
NUBIS_LIBVIRT_PEER_URI = config.env_str("NUBIS_LIBVIRT_PEER_URI", "qemu+tls://{address}/system")
NUBIS_HEARTBEAT_SECONDS = config.env_int("NUBIS_HEARTBEAT_SECONDS", 30, minimum=1)
NUBIS_LIVE_CHECK_SECONDS = config.env_int("NUBIS_LIVE_CHECK_SECONDS", 5, minimum=1)  # portal.consumers
# Compute: where images and instance disks live, and how hosts report in.
# QEMU (libvirt-qemu) and containers' mapped root must reach them: a checkout in a private
# directory gets them under /var/lib/nubis instead of its var/ (portal.stores).
NUBIS_IMAGE_DIR = config.env_path(
    "NUBIS_IMAGE_DIR", lambda: stores.default_store(DATA_DIR, BASE_DIR / "var", "images")
)
NUBIS_INSTANCE_DIR = config.env_path(
    "NUBIS_INSTANCE_DIR", lambda: stores.default_store(DATA_DIR, BASE_DIR / "var", "instances")
)
NUBIS_HOST_HEARTBEAT_SECONDS = config.env_int("NUBIS_HOST_HEARTBEAT_SECONDS", 5, minimum=1)
NUBIS_HOST_HEARTBEAT_TIMEOUT = config.env_int("NUBIS_HOST_HEARTBEAT_TIMEOUT", 30, minimum=2)
# An agent whose database connection breaks mid-operation waits this long for it (with backoff),
# then runs the operation again from its claim.
NUBIS_DB_RETRY_SECONDS = config.env_int("NUBIS_DB_RETRY_SECONDS", 120, minimum=0)
# The operations outbox (compute.services.outbox), run by the control worker every
# NUBIS_DISPATCH_SECONDS: a pending operation no agent claimed within NUBIS_DISPATCH_GRACE seconds
# of being sent is sent again (the wait doubles each time, up to a minute); one whose send failed
# (broker down) is tried again each round. A claimed operation is lost once its host's agent has
# not heartbeated for NUBIS_CLAIM_LEASE_SECONDS, as the control worker saw it: it is then failed.
NUBIS_DISPATCH_SECONDS = config.env_int("NUBIS_DISPATCH_SECONDS", 2, minimum=1)
NUBIS_DISPATCH_GRACE = config.env_int("NUBIS_DISPATCH_GRACE", 5, minimum=1)
NUBIS_CLAIM_LEASE_SECONDS = config.env_int(
    "NUBIS_CLAIM_LEASE_SECONDS", max(20, 4 * NUBIS_HOST_HEARTBEAT_SECONDS), minimum=2
)
if NUBIS_CLAIM_LEASE_SECONDS < 2 * NUBIS_HOST_HEARTBEAT_SECONDS:
    raise config.ConfigError(
        "NUBIS_CLAIM_LEASE_SECONDS",
        f"must be at least twice NUBIS_HOST_HEARTBEAT_SECONDS ({NUBIS_HOST_HEARTBEAT_SECONDS} s): "
        "a live agent would lose its claims between two heartbeats",
    )
NUBIS_LIBVIRT_NETWORK = config.env_str("NUBIS_LIBVIRT_NETWORK", "default")
# Domains this deployment owns are named <prefix><instance uuid>; others on the daemon are left alone.
NUBIS_DOMAIN_PREFIX = config.env_str("NUBIS_DOMAIN_PREFIX", "nubis-")
# The master key's provider (security.keys): empty, the file DATA_DIR/keys/master.json; else the
# dotted path of a class taking no arguments (a KMS client).
NUBIS_KEY_PROVIDER = config.env_str("NUBIS_KEY_PROVIDER", "")
NUBIS_SHUTDOWN_TIMEOUT = config.env_int("NUBIS_SHUTDOWN_TIMEOUT", 30, minimum=1)
# Live migration (compute.services.migration): a move past NUBIS_MIGRATION_TIMEOUT seconds is
# aborted (the VM stays where it was); the switch-over pause is held under the downtime limit.
# NUBIS_SHARED_INSTANCE_STORE: the instance store is one file system mounted at the same path on
# every host (NFS, CephFS, a cluster file system), so disks stay put; otherwise they are copied.
NUBIS_MIGRATION_TIMEOUT = config.env_int("NUBIS_MIGRATION_TIMEOUT", 120, minimum=1)
# Volumes: seconds a running guest has to let go of a volume being detached (then it stays attached,
# with the reason).
NUBIS_VOLUME_DETACH_TIMEOUT = config.env_int("NUBIS_VOLUME_DETACH_TIMEOUT", 30, minimum=1)
NUBIS_MIGRATION_DOWNTIME_MS = config.env_int("NUBIS_MIGRATION_DOWNTIME_MS", 300, minimum=10)
NUBIS_SHARED_INSTANCE_STORE = config.env_bool("NUBIS_SHARED_INSTANCE_STORE", False)
# HA (compute.services.ha): a host silent for NUBIS_HA_GRACE seconds is declared dead and fenced, and
# its HA instances restart elsewhere; the check runs every NUBIS_HA_CHECK_SECONDS.
# Maintenance (compute.services.evacuation): moves under way at once off a host entering it.
NUBIS_EVACUATE_PARALLEL = config.env_int("NUBIS_EVACUATE_PARALLEL", 2, minimum=1)
NUBIS_HA_GRACE = config.env_int("NUBIS_HA_GRACE", 60, minimum=1)
NUBIS_HA_CHECK_SECONDS = config.env_int("NUBIS_HA_CHECK_SECONDS", 5, minimum=1)
# Default overcommit ratios for placement; a host or its aggregate may set its own.
NUBIS_OVERCOMMIT = {"cpu": 4.0, "ram": 1.0, "disk": 1.0}
# The placement pipeline (scheduler.engine): filters in order, weighers with their multipliers
# (positive spreads, negative packs).
NUBIS_SCHEDULER_FILTERS = ("state", "capability", "aggregate", "server_group", "capacity")
NUBIS_SCHEDULER_WEIGHERS = {"ram": 1.0, "cpu": 1.0, "disk": 0.5, "load": 0.5, "soft_affinity": 2.0}
# Admission: "reserved" counts what instances reserved on a host; "demand" counts what they were
# measured using over the last minute (an instance without samples yet counts its reservation).
NUBIS_ADMISSION_MODE = config.env_choice("NUBIS_ADMISSION_MODE", "reserved", ["reserved", "demand"])
# The admission queue: a waiting request gains one priority level per NUBIS_QUEUE_AGING_SECONDS;
# after NUBIS_QUEUE_MAX_WAIT it is overdue: it goes first and nothing behind it is admitted before
# it (so no request starves). A request still waiting after NUBIS_QUEUE_GIVE_UP fails.
NUBIS_QUEUE_AGING_SECONDS = config.env_int("NUBIS_QUEUE_AGING_SECONDS", 120, minimum=1)
NUBIS_QUEUE_MAX_WAIT = config.env_int("NUBIS_QUEUE_MAX_WAIT", 600, minimum=1)
NUBIS_QUEUE_GIVE_UP = config.env_int("NUBIS_QUEUE_GIVE_UP", 86400, minimum=60)
NUBIS_QUEUE_SECONDS = config.env_int("NUBIS_QUEUE_SECONDS", 15, minimum=1)
# Dynamic allocation: the adjuster's period, and its hysteresis (see scheduler.allocation).
NUBIS_ALLOCATION_SECONDS = config.env_int("NUBIS_ALLOCATION_SECONDS", 30, minimum=1)
# How long an instance may stay in a transient state before the reconciler steps in.
NUBIS_TRANSIENT_DEADLINE = config.env_int("NUBIS_TRANSIENT_DEADLINE", 600, minimum=1)
# The agent reconciles its host this often; orphans are removed after staying orphaned this long.
NUBIS_RECONCILE_SECONDS = config.env_int("NUBIS_RECONCILE_SECONDS", 30, minimum=1)
NUBIS_ORPHAN_GRACE = config.env_int("NUBIS_ORPHAN_GRACE", 300, minimum=0)
# Containers: unpacked read-only root filesystems (shared per image and uid range), user
# namespaces (root in a container is an unprivileged uid range of its tenant on the host), and
# how long a container gets between SIGTERM and SIGKILL.
NUBIS_ROOTFS_DIR = config.env_path("NUBIS_ROOTFS_DIR", NUBIS_IMAGE_DIR / "unpacked")
# Images tenants upload (compute.services.image_upload): where their files go (a directory every
# host reads, like the image store), the largest file accepted (GiB; the tenant's image_gib quota
# bounds it further) and the largest virtual size (GiB) of a disk made from one.
NUBIS_IMAGE_UPLOAD_DIR = config.env_path("NUBIS_IMAGE_UPLOAD_DIR", NUBIS_IMAGE_DIR / "uploads")
NUBIS_IMAGE_MAX_GIB = config.env_int("NUBIS_IMAGE_MAX_GIB", 50, minimum=1)
# An image upload whose bytes stopped coming this long ago is undone (row, file, claim).
NUBIS_IMAGE_UPLOAD_STALE_SECONDS = config.env_int("NUBIS_IMAGE_UPLOAD_STALE_SECONDS", 3600, minimum=60)
NUBIS_IMAGE_MAX_VIRTUAL_GIB = config.env_int("NUBIS_IMAGE_MAX_VIRTUAL_GIB", 200, minimum=1)
# The reconciler removes an unpacked tree once no container has used it for this long (kept
# meanwhile, so deleting a container and making another of its image does not unpack again).
NUBIS_ROOTFS_GRACE = config.env_int("NUBIS_ROOTFS_GRACE", 600, minimum=0)
NUBIS_CONTAINER_USERNS = config.env_bool("NUBIS_CONTAINER_USERNS", True)
NUBIS_CONTAINER_STOP_TIMEOUT = config.env_int("NUBIS_CONTAINER_STOP_TIMEOUT", 10, minimum=1)
# The cgroup (under every controller) that holds this host's containers: <parent>/<container>.
# Hosts that share a machine's cgroup tree (the lab's: compute.lab) each take their own.
NUBIS_CGROUP_PARENT = config.env_str("NUBIS_CGROUP_PARENT", "nubis").strip("/") or "nubis"
# Each agent samples its host and instances this often (the UI's sparklines, the scheduler's load).
NUBIS_METRICS_SECONDS = config.env_int("NUBIS_METRICS_SECONDS", 10, minimum=1)
NUBIS_CONTAINER_WATCH_SECONDS = config.env_int("NUBIS_CONTAINER_WATCH_SECONDS", 1, minimum=1)
# The portal asks a host's agent for console output, container logs and exec (compute.services.
# host_rpc): no answer within this many seconds is a 503 naming the host (exec waits its own
# timeout on top).
NUBIS_AGENT_RPC_TIMEOUT = config.env_int("NUBIS_AGENT_RPC_TIMEOUT", 5, minimum=1)
# Tenant networks: per-network dnsmasq state on each host. dnsmasq reads it as "nobody", so every
# directory above must be searchable by others; it is rebuilt from the database, so /run will do.
NUBIS_NETWORK_STATE_DIR = config.env_path("NUBIS_NETWORK_STATE_DIR", Path("/run/nubis/networks"))
# Each tenant's "default" network (made on its first instance) takes the first free /24 of this.
NUBIS_NETWORK_POOL = config.env_str("NUBIS_NETWORK_POOL", "10.128.0.0/9")
# Subnets tenants may not use (comma-separated): by default libvirt's own NAT network.
NUBIS_RESERVED_SUBNETS = [
    s.strip() for s in config.env_str("NUBIS_RESERVED_SUBNETS", "192.168.122.0/24").split(",") if s.strip()
]
# Host port forwards (compute.services.floating_ips) take their host ports from this range (tcp).
NUBIS_PORT_FORWARD_RANGE = config.env_port_range("NUBIS_PORT_FORWARD_RANGE", "30000-30999")
# Fault injection for crash tests: the agent kills itself (SIGKILL) right after this create step.
NUBIS_FAULT_CRASH_AFTER = config.env_str("NUBIS_FAULT_CRASH_AFTER", "")

# Limits a new tenant starts with; admins change them per tenant in Django admin.
NUBIS_DEFAULT_QUOTA: dict[str, int | str] = {
    "instances": config.env_int("NUBIS_QUOTA_INSTANCES", 10),
    "vcpus": config.env_int("NUBIS_QUOTA_VCPUS", 20),
    "ram_mib": config.env_int("NUBIS_QUOTA_RAM_MIB", 32768),
    "disk_gib": config.env_int("NUBIS_QUOTA_DISK_GIB", 200),
    "containers": config.env_int("NUBIS_QUOTA_CONTAINERS", 20),
    "snapshots": config.env_int("NUBIS_QUOTA_SNAPSHOTS", 20),
    "backup_gib": config.env_int("NUBIS_QUOTA_BACKUP_GIB", 100),
    "image_gib": config.env_int("NUBIS_QUOTA_IMAGE_GIB", 20),
    "floating_ips": config.env_int("NUBIS_QUOTA_FLOATING_IPS", 2),
    "max_priority": config.env_choice(
        "NUBIS_QUOTA_MAX_PRIORITY", "normal", ["low", "normal", "high", "critical"]
    ),
}

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "channels",
    "axes",
    "portal",
    "tenants",
    "compute",
    "scheduler",
    "security",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "portal.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "security.middleware.AuditMiddleware",
    # A NUL in any query string (PostgreSQL text cannot hold one): 400 naming the parameter, on every
    # route; inside the audit, so a refused write still leaves its one record.
    "portal.query_strings.QueryStringMiddleware",
    # API bodies: too large (413), not JSON (415) or nested too deep (400) are refused before anything
    # reads them; inside the audit, so a refused write still leaves its one record.
    "portal.body_limits.ApiBodyMiddleware",
    # RateLimit-* headers on every API answer whose request spent a rate-limit budget.
    "portal.throttling.RateLimitHeadersMiddleware",
    # Inside the audit: a replayed POST is still a request, and still leaves its one record.
    "portal.idempotency.IdempotencyMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a login django-axes refused into the lockout page (portal.lockout).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.tenant_switcher",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes first: it refuses a login for a locked account or address before any check of the
# password; it never logs anyone in itself.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Login lockout (portal.lockout): NUBIS_LOGIN_FAILURES failed logins for one account, or from one
# client address, lock it for NUBIS_LOGIN_LOCKOUT_SECONDS after the last of them (0: until a staff
# unlock). A login refused while locked does not extend the lock.
AXES_FAILURE_LIMIT = config.env_int("NUBIS_LOGIN_FAILURES", 10, minimum=1)
_LOGIN_LOCKOUT_SECONDS = config.env_int("NUBIS_LOGIN_LOCKOUT_SECONDS", 900, minimum=0)
AXES_COOLOFF_TIME = timedelta(seconds=_LOGIN_LOCKOUT_SECONDS) if _LOGIN_LOCKOUT_SECONDS else None
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "portal.lockout.lockout_response"
AXES_CLIENT_IP_CALLABLE = "security.audit.client_ip"  # the address the audit trail records
AXES_DISABLE_ACCESS_LOG = True  # successful logins are in the audit trail already
AXES_ENABLE_ADMIN = False  # portal.admin registers the attempts, with an audited unlock
AXES_VERBOSE = False
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# The image collects its static files at build time (NUBIS_STATIC_ROOT=/app/staticfiles), so a data
# directory mounted over /var/lib/nubis neither hides them nor keeps an older release's.
STATIC_ROOT = config.env_path("NUBIS_STATIC_ROOT", DATA_DIR / "staticfiles")
# WhiteNoise serves static files from the ASGI process itself; finders let it work before collectstatic.
WHITENOISE_USE_FINDERS = True

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    SESSION_COOKIE_SECURE = config.env_bool("NUBIS_SECURE_COOKIES", False)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# Production behind the TLS-terminating proxy (NUBIS_HTTPS=1): the proxy says the request came in
# over HTTPS (X-Forwarded-Proto, which it must set and never pass through from the client), plain
# HTTP is redirected (but /healthz, which the stack's health checks ask for inside it), browsers
# are told to use HTTPS only (HSTS), and cookies go over HTTPS only.
NUBIS_HTTPS = config.env_bool("NUBIS_HTTPS", False)
if NUBIS_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = config.env_int("NUBIS_HSTS_SECONDS", 31536000, minimum=1)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = config.env_bool("NUBIS_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = config.env_bool("NUBIS_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "nubis",
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "nubis:asgi", "expiry": 60, "capacity": 1000},
    }
}

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "EXCEPTION_HANDLER": "portal.api_errors.problem_exception_handler",
    # The API takes JSON bodies only (portal.body_limits refuses others with 415 before DRF runs).
    "DEFAULT_PARSER_CLASSES": ["portal.parsers.CheckedJSONParser"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["portal.throttling.ApiRateThrottle"],
}
# API rate limits (portal.throttling), counted in Redis: a request made with an API token spends the
# token's budget, a session request its user's, an anonymous one its client address's.
NUBIS_API_RATE_TOKEN = config.env_rate("NUBIS_API_RATE_TOKEN", "600/min")
NUBIS_API_RATE_USER = config.env_rate("NUBIS_API_RATE_USER", "1200/min")
NUBIS_API_RATE_ANON = config.env_rate("NUBIS_API_RATE_ANON", "60/min")
# Whether `manage.py serve` takes the client's address from X-Forwarded-For (daphne's
# --proxy-headers). Only behind a proxy that overwrites that header: otherwise any client could
# name its own address, and step around the per-address login lockout and rate limits.
NUBIS_TRUST_PROXY_HEADERS = config.env_bool("NUBIS_TRUST_PROXY_HEADERS", False)
# The largest request body accepted (bytes); a larger API request is answered 413 (portal.body_limits).
DATA_UPLOAD_MAX_MEMORY_SIZE = config.env_int("NUBIS_MAX_BODY_BYTES", 2_621_440, minimum=1024)
# Idempotency-Key on API POSTs (portal.idempotency): how long an answer is kept for retries, and how
# long a duplicate waits for the first request with its key to finish before it answers 409.
NUBIS_IDEMPOTENCY_TTL = config.env_int("NUBIS_IDEMPOTENCY_TTL", 86400, minimum=60)
NUBIS_IDEMPOTENCY_WAIT = config.env_int("NUBIS_IDEMPOTENCY_WAIT", 30, minimum=1)
SPECTACULAR_SETTINGS = {
    "TITLE": "Nubis API",
    "DESCRIPTION": "Self-service private cloud: tenants, virtual machines, containers and operations.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # Swagger UI assets come from the drf-spectacular-sidecar package, never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # No validator badge: Swagger UI would load it from validator.swagger.io (sending it the
    # schema's URL), which the Content-Security-Policy (img-src 'self') refuses anyway.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "REDOC_DIST": "SIDECAR",
    # Choice sets shared by several fields get one named component each (not "Kind870Enum").
    "ENUM_NAME_OVERRIDES": {
        "InstanceKindEnum": "compute.models.InstanceKind",
        "ImageKindEnum": "compute.models.ImageKind",
        "InstanceStateEnum": "compute.models.InstanceState",
        "ImageStateEnum": "compute.models.ImageState",
        "VolumeStateEnum": "compute.models.VolumeState",
        "DiskFormatEnum": "compute.models.DiskFormat",
        "DrsPassKindEnum": "scheduler.models.DrsPassKind",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "portal.schema.problem_responses",
    ],
}

# Celery: JSON only, at-least-once delivery with acks after the task ran, one queue per host.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = config.env_int("NUBIS_TASK_SOFT_TIME_LIMIT", 600, minimum=1)
CELERY_TASK_TIME_LIMIT = config.env_int("NUBIS_TASK_TIME_LIMIT", 660, minimum=1)
CELERY_RESULT_EXPIRES = timedelta(days=1)
CELERY_TASK_DEFAULT_QUEUE = "control"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# acks_late needs a visibility timeout longer than the longest task, or Redis redelivers it.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT * 2}
CELERY_TIMEZONE = TIME_ZONE
# django_celery_beat's scheduler, kept alive through a database outage (portal.beat).
CELERY_BEAT_SCHEDULER = "portal.beat:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    "tenant-heartbeat": {
        "task": "portal.tasks.heartbeat",
        "schedule": float(NUBIS_HEARTBEAT_SECONDS),
        "options": {"queue": "control", "expires": float(NUBIS_HEARTBEAT_SECONDS)},
    },
    "hosts-check": {
        "task": "compute.hosts_check",
        "schedule": 15.0,
        "options": {"queue": "control", "expires": 15.0},
    },
    "ha-check": {
        "task": "compute.ha_check",
        "schedule": float(NUBIS_HA_CHECK_SECONDS),
        "options": {"queue": "control", "expires": float(NUBIS_HA_CHECK_SECONDS)},
    },
    "evacuate": {
        "task": "compute.evacuate",
        "schedule": 5.0,
        "options": {"queue": "control", "expires": 5.0},
    },
    # A tick: the task runs a pass when DrsSettings.interval_seconds (editable) has passed.
    "drs": {
        "task": "compute.drs_pass",
        "schedule": 15.0,
        "options": {"queue": "control", "expires": 15.0},
    },
    "uploads-sweep": {
        "task": "compute.uploads_sweep",
        "schedule": 600.0,
        "options": {"queue": "control", "expires": 600.0},
    },
    "metrics-rollup": {
        "task": "compute.metrics_rollup",
        "schedule": 300.0,
        "options": {"queue": "control", "expires": 300.0},
    },
    "admission-queue": {
        "task": "compute.admission_run",
        "schedule": float(NUBIS_QUEUE_SECONDS),
        "options": {"queue": "control", "expires": float(NUBIS_QUEUE_SECONDS)},
    },
    "allocation-adjust": {
        "task": "compute.allocation_adjust",
        "schedule": float(NUBIS_ALLOCATION_SECONDS),
        "options": {"queue": "control", "expires": float(NUBIS_ALLOCATION_SECONDS)},
    },
    "quota-drift-check": {
        "task": "tenants.tasks.quota_drift_check",
        "schedule": float(config.env_int("NUBIS_QUOTA_DRIFT_SECONDS", 600, minimum=10)),
        "options": {"queue": "control"},
    },
}
DJANGO_CELERY_BEAT_TZ_AWARE = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": config.env_str("LOG_LEVEL", "INFO").upper()},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
