from django.urls import path

from . import views

app_name = "payments"
urlpatterns = [
    path("checkout/", views.checkout, name="checkout"),
    path("orders/", views.order_list, name="orders"),
    path("orders/<int:pk>/", views.order_detail, name="order"),
    path("stripe/webhook/", views.stripe_webhook, name="stripe-webhook"),
    path("sandbox/authenticate/<str:charge_id>/", views.sandbox_authenticate, name="sandbox-authenticate"),
]
