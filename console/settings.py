"""Settings for both runtimes.

The embedded runtime (the default, what `make run` starts) needs nothing but a
writable `DATA_DIR`: SQLite, Celery on kombu's filesystem transport and an
in-memory channel layer. Setting `DATABASE_URL` and `REDIS_URL` switches the same
code to the scaled runtime (PostgreSQL, Redis for Celery and channels). Every
variable is documented in `.env.example`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local .env is optional; real deployments set variables in the environment.
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env")


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def _env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "var"))).resolve()
try:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
except OSError as exc:
    raise ImproperlyConfigured(f"DATA_DIR {DATA_DIR} is not writable: {exc}") from exc


def _load_or_create_secret_key() -> str:
    """Keep one generated key in DATA_DIR so sessions and encrypted secrets survive restarts."""
    path = DATA_DIR / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if len(key) < 32:
            raise ImproperlyConfigured(f"{path} holds a key shorter than 32 characters") from None
        return key
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


SECRET_KEY = env.str("SECRET_KEY", default="") or _load_or_create_secret_key()


def _env_list(name: str, default: list[str]) -> list[str]:
    values = [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]
    return values or default


SECRET_KEY_FALLBACKS = _env_list("SECRET_KEY_FALLBACKS", [])
DEBUG = _env_bool("DEBUG", False)

HOST = env.str("HOST", default="127.0.0.1")
PORT = _env_int("PORT", 8000, minimum=1)
ALLOWED_HOSTS = _env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", HOST])
CSRF_TRUSTED_ORIGINS = _env_list("CSRF_TRUSTED_ORIGINS", [])

# HTTPS-only hardening: off by default because `make run` serves plain HTTP on
# loopback; turn on behind a TLS-terminating proxy.
HTTPS = _env_bool("HTTPS", False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS and _env_bool("SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = _env_int("SECURE_HSTS_SECONDS", 31536000) if HTTPS else 0
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
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
            "max_size": _env_int("DB_POOL_SIZE", 10, minimum=1),
            "timeout": 30,
        }
        _db["CONN_MAX_AGE"] = 0
    else:
        _db.setdefault("CONN_MAX_AGE", _env_int("DB_CONN_MAX_AGE", 60))
        _db["CONN_HEALTH_CHECKS"] = True
    DATABASES = {"default": _db}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "console.sqlite3",
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
            # Opening a SQLite connection (and its PRAGMAs) costs more than most queries: keep them.
            "CONN_MAX_AGE": _env_int("DB_CONN_MAX_AGE", 600),
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
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Celery -------------------------------------------------------------------
CELERY_QUEUE = env.str("CELERY_QUEUE", default="console")
CELERY_TASK_DEFAULT_QUEUE = CELERY_QUEUE
_broker_override = env.str("CELERY_BROKER_URL", default="")
if _broker_override:
    CELERY_BROKER_URL = _broker_override
    CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL or "rpc://")
elif REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL)
else:
    _broker_dir = DATA_DIR / "broker"
    _results_dir = DATA_DIR / "results"
    for _d in (_broker_dir / "queue", _broker_dir / "processed", _results_dir):
        _d.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Producer and consumer share one folder: that is the queue.
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
    CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=f"file://{_results_dir}")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = _env_int("CELERY_TASK_SOFT_TIME_LIMIT", 3600, minimum=1)
CELERY_TASK_TIME_LIMIT = _env_int("CELERY_TASK_TIME_LIMIT", 3660, minimum=1)
CELERY_WORKER_CONCURRENCY = _env_int("CELERY_CONCURRENCY", 2, minimum=1)
CELERY_TIMEZONE = "UTC"
# Threads per web process for the gateway's database work (each keeps its connection).
GATEWAY_DB_THREADS = _env_int("GATEWAY_DB_THREADS", 8, minimum=1)
# How long /healthz?deep=1 waits for a worker to answer its ping.
HEALTH_WORKER_TIMEOUT = float(_env_int("HEALTH_WORKER_TIMEOUT", 5, minimum=1))

# --- embedded local models (models_registry/local_llm, `manage.py serve_local_llm`) ---
# `off` leaves the model server out of `make run`.
LOCAL_LLM = "off" if not _env_bool("LOCAL_LLM", True) else "on"
LOCAL_LLM_HOST = env.str("LOCAL_LLM_HOST", default="127.0.0.1")
LOCAL_LLM_PORT = _env_int("LOCAL_LLM_PORT", 8001, minimum=1)
# Where the gateway's `local` adapter reaches the server.
LOCAL_LLM_URL = env.str("LOCAL_LLM_URL", default="") or f"http://{LOCAL_LLM_HOST}:{LOCAL_LLM_PORT}/v1"
LOCAL_LLM_WARMUP_WAIT = float(_env_int("LOCAL_LLM_WARMUP_WAIT", 5, minimum=0))  # seconds a call waits at warm-up
# Context window of each llama.cpp instance (and of the registered local models).
LOCAL_LLM_CTX = _env_int("LOCAL_LLM_CTX", 2048, minimum=256)

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
API_KEY_TOUCH_SECONDS = _env_int("API_KEY_TOUCH_SECONDS", 60)

# --- i18n, static -------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # the static file server warns at every start when it is missing
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "servestatic.storage.CompressedManifestStaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stderr"], "level": env.str("LOG_LEVEL", default="INFO")},
    # httpx logs every upstream request at INFO: noise, and a cost on the gateway's hot path.
    "loggers": {"django.db.backends": {"level": "INFO"}, "httpx": {"level": "WARNING"}},
}
