from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from console.datadir import prepare_data_dir

# Before the settings are read: they name the folders and the secret key that this creates.
prepare_data_dir()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
application = get_wsgi_application()
