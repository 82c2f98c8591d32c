from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from console.datadir import prepare_data_dir

# Before the settings are read: they name the folders and the secret key that this creates.
prepare_data_dir()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
# Django first: it populates the app registry that the routing imports below rely on.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from chat.asgi import GatewayRouter  # noqa: E402
from console.lib.asgi import TrustedProxies  # noqa: E402
from console.routing import websocket_urlpatterns  # noqa: E402

application = TrustedProxies(
    ProtocolTypeRouter(
        {
            # The inference API's paths are served by the gateway directly; the rest by Django.
            "http": GatewayRouter(django_asgi_app),
            "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    ),
    # Who the client is, decided once for every door (daphne runs without --proxy-headers).
    networks=settings.TRUSTED_PROXY_NETWORKS,
)
