"""Shared argument handling of create_api_key and create_access_key."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from console import selectors
from console.models import Project


class CredentialCommand(BaseCommand):
    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--project", help="project id (32 hex); default: the user's first project")
        parser.add_argument("--name", default="cli", help="a label shown on the keys page")
        parser.add_argument("--expires-in-days", type=int, default=None)

    def resolve(self, options: dict[str, Any]) -> tuple[User, Project]:
        user_model = get_user_model()
        try:
            user = user_model.objects.get(username=options["username"])
        except user_model.DoesNotExist:
            raise CommandError(f"no user called {options['username']!r}") from None
        if options["project"]:
            membership = selectors.membership_for(user=user, project_id=options["project"])
            if membership is None:
                raise CommandError(f"{user} is not a member of project {options['project']}")
        else:
            membership = selectors.default_membership(user=user)
            if membership is None:
                raise CommandError(f"{user} belongs to no project; run bootstrap or add them to one")
        return user, membership.project
