from __future__ import annotations

from django.urls import path

from chat import views

app_name = "chat"

urlpatterns = [
    path("", views.playground, name="playground"),
    path("c/<str:conversation_id>/", views.playground, name="conversation"),
    path("c/<str:conversation_id>/rename/", views.conversation_rename, name="conversation_rename"),
    path("c/<str:conversation_id>/share/", views.conversation_share, name="conversation_share"),
    path("c/<str:conversation_id>/delete/", views.conversation_delete, name="conversation_delete"),
    path("c/<str:conversation_id>/export.md", views.conversation_export, {"fmt": "md"}, name="export_md"),
    path("c/<str:conversation_id>/export.json", views.conversation_export, {"fmt": "json"}, name="export_json"),
]
