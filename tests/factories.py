"""Small factories for the suite; personas: alice owns, bob is in another project, carol is an operator."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from console.models import Membership, Project, Role

PASSWORD = "correct-horse-battery-staple"


def make_user(username: str, *, password: str = PASSWORD, is_staff: bool = False) -> User:
    user_model = get_user_model()
    return user_model.objects.create_user(
        username=username, password=password, email=f"{username}@example.test", is_staff=is_staff
    )


def make_project(*, name: str, owner: User) -> Project:
    project = Project.objects.create(name=name)
    Membership.objects.create(project=project, user=owner, role=Role.ADMIN)
    return project


def add_member(*, project: Project, user: User, role: str = Role.MEMBER) -> Membership:
    return Membership.objects.create(project=project, user=user, role=role)
