from django.urls import path

from shop import views

urlpatterns = [path("checkout/<str:user_id>", views.checkout)]
