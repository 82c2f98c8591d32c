from __future__ import annotations

from django.urls import path

from forecasts import views

app_name = "forecasts"

urlpatterns = [
    path("", views.job_list, name="job_list"),
    path("status/", views.job_status, name="job_status"),
    path("new/", views.job_new, name="job_new"),
    path("<str:job_id>/", views.job_detail, name="job_detail"),
    path("<str:job_id>/cancel/", views.job_cancel, name="job_cancel"),
    path("<str:job_id>/files/<path:key>", views.job_file, name="job_file"),
]
