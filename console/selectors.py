"""Reads for accounts, projects and credentials, always scoped to what the caller may see."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import Count, QuerySet

from console.models import AccessKey, ApiKey, Membership, Project, Role


def projects_for_user(*, user: User) -> QuerySet[Project]:
    return Project.objects.filter(memberships__user=user).annotate(member_count=Count("memberships"))


def membership_for(*, user: User, project_id: str) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.select_related("project").filter(user=user, project_id=project_id).first()


def default_membership(*, user: User) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.select_related("project").filter(user=user).order_by("created_at", "pk").first()


def project_members(*, project: Project) -> QuerySet[Membership]:
    return Membership.objects.select_related("user").filter(project=project).order_by("user__username")


def api_keys_visible(*, user: User, membership: Membership) -> QuerySet[ApiKey]:
    """A project admin sees every key of the project; anyone else only their own."""
    keys = ApiKey.objects.select_related("user").filter(project=membership.project)
    return keys if membership.role == Role.ADMIN else keys.filter(user=user)


def access_keys_visible(*, user: User, membership: Membership) -> QuerySet[AccessKey]:
    keys = AccessKey.objects.select_related("user").filter(project=membership.project)
    return keys if membership.role == Role.ADMIN else keys.filter(user=user)
