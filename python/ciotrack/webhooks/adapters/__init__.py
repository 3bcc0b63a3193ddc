"""Framework adapters over ``WebhookHandler.handle()``; each imports its framework only when called.

* ``wsgi.make_wsgi_app(handler)`` / ``asgi.make_asgi_app(handler)``: plain callables, no framework.
* ``flask.blueprint(handler)``: a Flask blueprint with one POST route.
* ``django.view(handler)``: a CSRF-exempt Django view for your urlpatterns.
* ``starlette.endpoint(handler)`` / ``starlette.route(handler)``: Starlette or FastAPI.
"""
