"""Settings for both runtimes.

The embedded runtime (the default, what `make run` starts) needs nothing but a
writable `DATA_DIR`: SQLite, Celery on kombu's filesystem transport and an
in-memory channel layer. Setting `DATABASE_URL` and `REDIS_URL` switches the same
code to the scaled runtime (PostgreSQL, Redis for Celery and channels). Every
variable is documented in `.env.example`.
"""

from __future__ import annotations

import ipaddress
import os

from django.core.exceptions import ImproperlyConfigured

from console import datadir
from console.lib.env import env

# Every variable is read through `env` (django-environ, strict: a malformed value fails here with
# ImproperlyConfigured naming it) and read unconditionally, so a bad value fails at start even when
# the runtime would not use it, and `.env.example` can be checked against each default
# (tests/console/test_settings.py). A local .env is optional; real deployments set variables in the
# environment.
BASE_DIR = datadir.BASE_DIR

# Only paths: `console.datadir.prepare_data_dir()`, run by every entry point, creates what is below.
DATA_DIR = datadir.data_dir()
_layout = datadir.Layout(DATA_DIR)

# Generated once into DATA_DIR/secret_key (by prepare_data_dir) when unset, so sessions and encrypted
# secrets survive restarts.
SECRET_KEY = env.str("SECRET_KEY", default="") or datadir.read_secret_key(_layout)
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
DEBUG = env.bool("DEBUG", default=False)

HOST = env.str("HOST", default="127.0.0.1")
PORT = env.int("PORT", default=8000, minimum=1)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[]) or ["127.0.0.1", "localhost", "[::1]", HOST]
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# HTTPS-only hardening: off by default because `make run` serves plain HTTP on
# loopback; turn on behind a TLS-terminating proxy.
HTTPS = env.bool("HTTPS", default=False)
_ssl_redirect = env.bool("SECURE_SSL_REDIRECT", default=True)
_hsts_seconds = env.int("SECURE_HSTS_SECONDS", default=31536000, minimum=0)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS and _ssl_redirect
SECURE_HSTS_SECONDS = _hsts_seconds if HTTPS else 0
# Forwarded headers (X-Forwarded-For, X-Forwarded-Proto) are believed only from these addresses or
# networks: the reverse proxies in front of daphne. Empty: the socket's peer is the client, and such
# headers are dropped before anything reads them (console.lib.asgi.TrustedProxies). The scheme a trusted
# proxy forwards reaches Django as the request's own, so no SECURE_PROXY_SSL_HEADER is needed (Django
# would believe that header from anyone).
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
_trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
for _proxy in TRUSTED_PROXIES:
    try:
        _trusted.append(ipaddress.ip_network(_proxy, strict=False))
    except ValueError:
        raise ImproperlyConfigured(
            f"TRUSTED_PROXIES must list addresses or networks such as 127.0.0.1 or 10.0.0.0/8, not {_proxy!r}"
        ) from None
TRUSTED_PROXY_NETWORKS = tuple(_trusted)
if HTTPS and SECURE_SSL_REDIRECT and not TRUSTED_PROXY_NETWORKS:
    # Otherwise every request looks like plain HTTP and is redirected to https forever.
    raise ImproperlyConfigured(
        "HTTPS=true serves behind a TLS proxy: list its address in TRUSTED_PROXIES (e.g. 127.0.0.1) "
        "so its X-Forwarded-Proto is believed, or set SECURE_SSL_REDIRECT=false"
    )
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    # Serves the API docs' Swagger UI from its own static files rather than a CDN.
    "ninja",
    "console",
    "models_registry",
    "chat",
    "forecasts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Async-capable, so the whole middleware chain stays on the event loop: a sync-only middleware
    # would cost every gateway call thread switches.
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The audit log's "from where": the request being served, for services to read (console.audit).
    "console.audit.AuditOriginMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "console.urls"
WSGI_APPLICATION = "console.wsgi.application"
ASGI_APPLICATION = "console.asgi.application"

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
                "console.context_processors.navigation",
            ],
        },
    },
]

# --- database -----------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", default="")
# Seconds a connection is kept open (SQLite, or a DATABASE_URL other than PostgreSQL): opening a SQLite
# connection (and its PRAGMAs) costs more than most queries. PostgreSQL uses a pool per process instead.
DB_CONN_MAX_AGE = env.int("DB_CONN_MAX_AGE", default=600, minimum=0)
DB_POOL_SIZE = env.int("DB_POOL_SIZE", default=10, minimum=1)
if DATABASE_URL:
    try:
        _db = env.db_url_config(DATABASE_URL)
    except Exception as exc:  # django-environ raises several types for bad URLs
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from exc
    if _db.get("ENGINE") == "django.db.backends.postgresql":
        # Under ASGI every request's ORM work runs in a thread of its own; a pool caps the
        # connections per process (waiting, not failing) instead of one per thread.
        _db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": DB_POOL_SIZE,
            "timeout": 30,
        }
        _db["CONN_MAX_AGE"] = 0
    else:
        _db.setdefault("CONN_MAX_AGE", DB_CONN_MAX_AGE)
        _db["CONN_HEALTH_CHECKS"] = True
    DATABASES = {"default": _db}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _layout.database,
            # WAL lets the web and worker processes read while one writes;
            # IMMEDIATE avoids "database is locked" on lock upgrades.
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # A file, not shared-cache memory: the gateway's concurrent requests each use their own
            # thread, and only a file database waits (busy timeout) instead of failing "table is locked".
            "TEST": {"NAME": str(DATA_DIR / "test-console.sqlite3")},
            "CONN_MAX_AGE": DB_CONN_MAX_AGE,
            "CONN_HEALTH_CHECKS": True,
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache, channels ---------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured("REDIS_URL must start with redis://, rediss:// or unix://")

if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    # Redis Pub/Sub, not the list-based RedisChannelLayer, whose consumers each wait on Redis (a
    # blocking BZPOPMIN under one per-process lock) and which allows one receiving event loop per
    # process. A closing socket cancels that read, and redis-py can swallow the cancellation
    # (redis/redis-py#2028): in the test suite a consumer of a stopped in-thread server stayed stuck in
    # its read, and the layer refused every other loop for the rest of the run. The Pub/Sub layer reads
    # Redis in one background task per event loop and hands messages to consumers through in-process
    # queues, so closing a socket cancels only a queue read; each event loop has its own layer. Delivery
    # is at most once, which suits live answers: the stored conversation is the record (docs/playground.md).
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Celery -------------------------------------------------------------------
CELERY_QUEUE = env.str("CELERY_QUEUE", default="console")
CELERY_TASK_DEFAULT_QUEUE = CELERY_QUEUE
_broker_override = env.str("CELERY_BROKER_URL", default="")
_result_backend = env.str("CELERY_RESULT_BACKEND", default="")
if _broker_override:
    CELERY_BROKER_URL = _broker_override
    CELERY_RESULT_BACKEND = _result_backend or REDIS_URL or "rpc://"
elif REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = _result_backend or REDIS_URL
else:
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Producer and consumer share one folder: that is the queue.
        "data_folder_in": str(_layout.broker_queue),
        "data_folder_out": str(_layout.broker_queue),
        "processed_folder": str(_layout.broker_processed),
        "store_processed": False,
        # Exchange tables; without this kombu writes them to `control/` in the working directory.
        "control_folder": str(_layout.broker_control),
        "polling_interval": 0.1,
    }
    CELERY_RESULT_BACKEND = _result_backend or f"file://{_layout.results}"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=3600, minimum=1)
# Forecast runs: a worker silent this long is taken as dead and its run handed to another worker;
# every worker looks for such runs this often (forecasts/tasks.py).
FORECAST_HEARTBEAT_STALE_SECONDS = env.int("FORECAST_HEARTBEAT_STALE_SECONDS", default=60, minimum=5)
FORECAST_REAP_SECONDS = env.float("FORECAST_REAP_SECONDS", default=20.0, minimum=0.5)
# The Pangu-Weather engine's four official ONNX files (pangu_weather_1/3/6/24.onnx) are put here by the
# operator; the console never downloads them (their licence, CC BY-NC-SA 4.0, is the operator's to accept).
_pangu_dir = env.str("PANGU_WEATHER_DIR", default="")
PANGU_WEATHER_DIR = datadir.resolve(_pangu_dir) if _pangu_dir else DATA_DIR / "models" / "pangu-weather"
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=3660, minimum=1)
CELERY_WORKER_CONCURRENCY = env.int("CELERY_CONCURRENCY", default=2, minimum=1)
CELERY_TIMEZONE = "UTC"
# Threads per web process for the gateway's database work (each keeps its connection).
GATEWAY_DB_THREADS = env.int("GATEWAY_DB_THREADS", default=8, minimum=1)
# Password checks (POST /v3/auth/tokens, the sign-in pages) are throttled per client address and per
# username: over either limit within a window they answer 429 with Retry-After and the password
# hasher does not run. Counters live in the cache (Redis when REDIS_URL is set: exact across processes).
PASSWORD_THROTTLE_WINDOW = env.int("PASSWORD_THROTTLE_WINDOW", default=300, minimum=1)
PASSWORD_THROTTLE_PER_USER = env.int("PASSWORD_THROTTLE_PER_USER", default=10, minimum=1)
PASSWORD_THROTTLE_PER_IP = env.int("PASSWORD_THROTTLE_PER_IP", default=50, minimum=1)
# IAM password checks hash on their own threads, never the gateway's database threads, so a login
# flood cannot slow inference; more than IAM_PASSWORD_QUEUE waiting checks are refused (429) at once.
IAM_PASSWORD_THREADS = env.int("IAM_PASSWORD_THREADS", default=1, minimum=1)
IAM_PASSWORD_QUEUE = env.int("IAM_PASSWORD_QUEUE", default=16, minimum=0)
# The longest a gateway call may last, a stream included (it then ends with an upstream timeout).
# A provider's timeout bounds each wait for the upstream, not the whole call: this bounds the call,
# and so tells the quota reconcile when a reservation can only belong to a call that died with its
# process.
GATEWAY_MAX_CALL_SECONDS = env.float("GATEWAY_MAX_CALL_SECONDS", default=3600.0, minimum=1)
# Gateway request bodies larger than this are refused (413) before they are read; the reverse proxy
# in front should refuse them too (nginx: client_max_body_size, README "Scaling out").
GATEWAY_MAX_BODY_BYTES = env.int("GATEWAY_MAX_BODY_BYTES", default=2 * 1024 * 1024, minimum=1024)
# How long /healthz?deep=1 waits for a worker to answer its ping.
HEALTH_WORKER_TIMEOUT = env.float("HEALTH_WORKER_TIMEOUT", default=5.0, minimum=1)

# --- embedded model server (local_llm/, `python -m local_llm`) -----------------
# The server reads these through local_llm.config; the console uses LOCAL_LLM, LOCAL_LLM_URL,
# LOCAL_LLM_WARMUP_WAIT and LOCAL_LLM_CTX. `off` leaves the server out of `make run`.
LOCAL_LLM = "on" if env.bool("LOCAL_LLM", default=True) else "off"
LOCAL_LLM_HOST = env.str("LOCAL_LLM_HOST", default="127.0.0.1")
LOCAL_LLM_PORT = env.int("LOCAL_LLM_PORT", default=8001, minimum=1)
# Where the gateway's `local` adapter reaches the server.
LOCAL_LLM_URL = env.str("LOCAL_LLM_URL", default="") or f"http://{LOCAL_LLM_HOST}:{LOCAL_LLM_PORT}/v1"
# Seconds a call to a local model waits for a server that is still starting.
LOCAL_LLM_WARMUP_WAIT = env.float("LOCAL_LLM_WARMUP_WAIT", default=5.0, minimum=0)
# GGUF files: the bundled models are put here, and any other .gguf dropped here is served.
_models_dir = env.str("LOCAL_LLM_MODELS_DIR", default="")
LOCAL_LLM_MODELS_DIR = datadir.resolve(_models_dir) if _models_dir else DATA_DIR / "models"
# Cores shared by every busy instance of every model: llama.cpp threads spin on their core, so more
# busy threads than cores makes every stream slower, never the total faster.
LOCAL_LLM_THREADS = env.int("LOCAL_LLM_THREADS", default=None, minimum=1) or os.cpu_count() or 1
# Threads per instance. 1 gives the best total throughput on a small box (two 1-thread instances
# ~100 tokens/s together against ~55-80 for one 2-thread instance on 2 cores).
LOCAL_LLM_INSTANCE_THREADS = env.int("LOCAL_LLM_INSTANCE_THREADS", default=1, minimum=1)
if LOCAL_LLM_INSTANCE_THREADS > LOCAL_LLM_THREADS:
    raise ImproperlyConfigured(
        f"LOCAL_LLM_INSTANCE_THREADS ({LOCAL_LLM_INSTANCE_THREADS}) must not exceed "
        f"LOCAL_LLM_THREADS ({LOCAL_LLM_THREADS})"
    )
# Most instances of one model (each holds its own KV cache; the weights are mmap-shared).
LOCAL_LLM_INSTANCES = env.int("LOCAL_LLM_INSTANCES", default=None, minimum=1) or max(
    1, LOCAL_LLM_THREADS // LOCAL_LLM_INSTANCE_THREADS
)
# Calls that may wait for a free instance, and for how many seconds; beyond, the server answers 429.
LOCAL_LLM_QUEUE = env.int("LOCAL_LLM_QUEUE", default=8, minimum=0)
LOCAL_LLM_QUEUE_TIMEOUT = env.float("LOCAL_LLM_QUEUE_TIMEOUT", default=30.0, minimum=0)
# Context window of each llama.cpp instance (and of the registered local models), and prompt batch.
LOCAL_LLM_CTX = env.int("LOCAL_LLM_CTX", default=2048, minimum=256)
LOCAL_LLM_BATCH = env.int("LOCAL_LLM_BATCH", default=256, minimum=8)
# Load every instance at start, so no call pays for a load (false: each on first need).
LOCAL_LLM_PRELOAD = env.bool("LOCAL_LLM_PRELOAD", default=True)

# --- auth ---------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "console:dashboard"
LOGOUT_REDIRECT_URL = "login"
CONSOLE_ADMIN_USERNAME = env.str("CONSOLE_ADMIN_USERNAME", default="admin")
CONSOLE_ADMIN_PASSWORD = env.str("CONSOLE_ADMIN_PASSWORD", default="")
CONSOLE_ADMIN_EMAIL = env.str("CONSOLE_ADMIN_EMAIL", default="admin@localhost")
# last_used_at is written at most this often per key, so a busy key costs no write per request.
API_KEY_TOUCH_SECONDS = env.int("API_KEY_TOUCH_SECONDS", default=60, minimum=0)
# Whoever creates a project is its admin, and admins choose where provider URLs point: site staff only,
# unless this opens it to every signed-in user (then see UPSTREAM_ALLOW_PRIVATE).
ANYONE_CAN_CREATE_PROJECTS = env.bool("ANYONE_CAN_CREATE_PROJECTS", default=False)

# --- /metrics (console/metrics.py) -------------------------------------------
# Prometheus's scrape. Without a token only the machine itself may read it (a loopback client address,
# by the TRUSTED_PROXIES rule); with one, a scrape anywhere must send `Authorization: Bearer <token>`.
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=True)
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# --- where provider URLs may point (console/lib/netpolicy.py) -----------------
# Link-local and cloud-metadata addresses are always refused. Loopback and private networks are allowed
# unless this is false; then only the networks listed below (and the embedded model server) are.
UPSTREAM_ALLOW_PRIVATE = env.bool("UPSTREAM_ALLOW_PRIVATE", default=True)
UPSTREAM_ALLOWED_NETWORKS = env.list("UPSTREAM_ALLOWED_NETWORKS", default=[])
for _network in UPSTREAM_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"UPSTREAM_ALLOWED_NETWORKS must list networks such as 10.1.0.0/16, not {_network!r}"
        ) from None

# --- i18n, static -------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = _layout.static
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "servestatic.storage.CompressedManifestStaticFilesStorage"},
}

# --- object storage of the forecast jobs (forecasts/storage.py) ----------------
# Buckets are folders under DATA_DIR/obs unless OBS_ENDPOINT names an S3-compatible service (Huawei OBS,
# MinIO, SeaweedFS, AWS S3), reached with these keys and region through boto3.
OBS_ROOT = _layout.obs
OBS_ENDPOINT = env.str("OBS_ENDPOINT", default="")
OBS_ACCESS_KEY_ID = env.str("OBS_ACCESS_KEY_ID", default="")
OBS_SECRET_ACCESS_KEY = env.str("OBS_SECRET_ACCESS_KEY", default="")
OBS_REGION = env.str("OBS_REGION", default="")
# path: https://endpoint/bucket/key (MinIO, SeaweedFS); virtual: https://bucket.endpoint/key (what
# Huawei OBS and AWS prefer); auto: boto3 chooses.
OBS_ADDRESSING_STYLE = env.str("OBS_ADDRESSING_STYLE", default="path")
if OBS_ADDRESSING_STYLE not in ("path", "virtual", "auto"):
    raise ImproperlyConfigured(f"OBS_ADDRESSING_STYLE must be path, virtual or auto, not {OBS_ADDRESSING_STYLE!r}")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stderr"], "level": env.str("LOG_LEVEL", default="INFO")},
    # httpx logs every upstream request at INFO: noise, and a cost on the gateway's hot path.
    "loggers": {"django.db.backends": {"level": "INFO"}, "httpx": {"level": "WARNING"}},
}
