from django.shortcuts import render

from config import topology


def home(request):
    return render(request, "core/home.html", {"pools": topology.POOLS, "routes": topology.ROUTES})
