from django.urls import path  # type: ignore[import-untyped]
from shop import views  # type: ignore[import-not-found]  # written from the README by the test

urlpatterns = [path("checkout/<str:user_id>", views.checkout)]
