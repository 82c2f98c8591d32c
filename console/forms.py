from __future__ import annotations

from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from console.audit import ACTIONS
from console.lib.asgi import request_client_ip
from console.lib.days import today
from console.models import Role
from console.throttle import PasswordThrottled, password_check

EXPIRY_CHOICES = [
    ("", "Never"),
    ("7", "7 days"),
    ("30", "30 days"),
    ("90", "90 days"),
    ("365", "1 year"),
]


class AuditFilterForm(forms.Form):
    action = forms.ChoiceField(required=False, choices=[])
    user = forms.CharField(required=False, max_length=150, label="User")
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    text = forms.CharField(required=False, max_length=200, label="Text")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        action = self.fields["action"]
        assert isinstance(action, forms.ChoiceField)
        action.choices = [("", "Any action"), *((code, code) for code in sorted(ACTIONS))]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise ValidationError("“From” must be on or before “To”.")
        for name in ("user", "text"):
            if "\x00" in data.get(name, ""):
                self.add_error(name, "NUL characters are not allowed.")
        return data


class UsageFilterForm(forms.Form):
    """The usage log's filters; every one optional."""

    model = forms.CharField(required=False, max_length=200, label="Model")
    key = forms.CharField(required=False, max_length=100, label="API key", help_text="Its name or prefix.")
    dialect = forms.ChoiceField(
        required=False,
        label="Door",
        choices=[
            ("", "Any door"),
            ("openai", "OpenAI API"),
            ("pangu", "Pangu API"),
            ("cloudbase", "CloudBase API"),
            ("playground", "Playground"),
        ],
    )
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Any outcome"), ("ok", "Answered"), ("error", "Refused or failed"), ("cancelled", "Cancelled")],
    )
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise ValidationError("“From” must be on or before “To”.")
        for name in ("model", "key"):
            if "\x00" in data.get(name, ""):
                self.add_error(name, "NUL characters are not allowed.")
        return data


class DashboardRangeForm(forms.Form):
    """The operations dashboard's days, both ends included (TIME_ZONE); the last 30 by default."""

    DEFAULT_DAYS = 30
    # A longer range would only thin each day's bar to a hairline; the rollups would answer it anyway.
    MAX_DAYS = 366

    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        until = data.get("until") or today()
        since = data.get("since") or self.default_since(until)
        if since > until:
            raise ValidationError("“From” must be on or before “To”.")
        if (until - since).days + 1 > self.MAX_DAYS:
            raise ValidationError(f"Pick at most {self.MAX_DAYS} days.")
        if until >= date.max - timedelta(days=1):
            raise ValidationError("Pick a day before the year 9999 ends.")
        data["since"], data["until"] = since, until
        return data

    @classmethod
    def default_since(cls, until: date) -> date:
        return until - timedelta(days=cls.DEFAULT_DAYS - 1)

    @staticmethod
    def quick_ranges() -> list[tuple[str, str]]:
        """The "Last N days" links: each label and its query string."""
        end = today()
        return [
            (
                f"Last {n} days",
                urlencode({"since": (end - timedelta(days=n - 1)).isoformat(), "until": end.isoformat()}),
            )
            for n in (7, 30, 90)
        ]

    def days(self) -> tuple[date, date]:
        """The days asked for, or the default ones when the form is empty or not valid."""
        if self.is_valid():
            return self.cleaned_data["since"], self.cleaned_data["until"]
        return self.default_since(today()), today()


class KeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses this key, e.g. “ci-bot” or “notebook”.")
    expires_in_days = forms.TypedChoiceField(
        choices=EXPIRY_CHOICES, coerce=int, empty_value=None, required=False, label="Expires"
    )


class ProjectCreateForm(forms.Form):
    name = forms.CharField(max_length=100)
    description = forms.CharField(max_length=255, required=False)


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(
        choices=Role.choices,
        help_text="Admins manage the project; members use models; operators submit and watch forecast jobs only.",
    )


class ThrottledLoginMixin:
    """Sign-in through `console.throttle.password_check`: past the limits the form fails with a
    "throttled" error (the view answers 429 with `retry_after`) and the password is not hashed."""

    request: Any
    retry_after: int | None = None

    def clean(self) -> dict[str, Any]:
        form: Any = self  # an AuthenticationForm: cleaned_data, user_cache and its error helpers
        username, password = form.cleaned_data.get("username"), form.cleaned_data.get("password")
        if username is not None and password:
            client_ip = request_client_ip(self.request) if self.request is not None else ""
            try:
                form.user_cache = password_check(
                    username=username, password=password, client_ip=client_ip, request=self.request
                )
            except PasswordThrottled as exc:
                self.retry_after = exc.retry_after
                raise ValidationError(str(exc), code="throttled") from None
            if form.user_cache is None:
                raise form.get_invalid_login_error()
            form.confirm_login_allowed(form.user_cache)
        return dict(form.cleaned_data)


class ThrottledAuthenticationForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass
