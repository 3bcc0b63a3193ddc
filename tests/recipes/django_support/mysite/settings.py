"""The smallest Django project around the README's ``shop`` app (no database, no middleware)."""

SECRET_KEY = "recipe-test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["shop.apps.ShopConfig"]
ROOT_URLCONF = "mysite.urls"
MIDDLEWARE: list[str] = []
DATABASES: dict[str, object] = {}
USE_TZ = True
