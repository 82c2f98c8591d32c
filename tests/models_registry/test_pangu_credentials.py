"""Which Pangu credentials are enough, decided in one place for the registry and the adapter.

The table is written by hand from the rule: an IAM user (endpoint, user name, domain and password),
or AK/SK, or a ready-made token; when several are complete, IAM wins, then AK/SK. A blank value is
no value."""

from __future__ import annotations

from typing import Any

import pytest

from models_registry.models import PanguAuthMode, Provider, ProviderKind, pangu_auth_mode
from models_registry.providers.pangu import PanguAdapter

IAM = {"iam_endpoint": "https://iam.example", "iam_username": "user", "iam_domain": "domain"}
PASSWORD = {"iam_password": "pw"}
AK = {"access_key": "AK0001"}
SK = {"secret_key": "sk"}
TOKEN = {"api_key": "MIItoken"}

TABLE: list[tuple[str, dict[str, Any], dict[str, str], PanguAuthMode | None]] = [
    ("nothing", {}, {}, None),
    ("token", {}, TOKEN, "token"),
    ("iam", IAM, PASSWORD, "iam"),
    ("iam with a project scope", {**IAM, "iam_project": "cn-southwest-2"}, PASSWORD, "iam"),
    ("iam without endpoint", {**IAM, "iam_endpoint": ""}, PASSWORD, None),
    ("iam without user", {k: v for k, v in IAM.items() if k != "iam_username"}, PASSWORD, None),
    ("iam without domain", {k: v for k, v in IAM.items() if k != "iam_domain"}, PASSWORD, None),
    ("iam without password", IAM, {}, None),
    ("password alone", {}, PASSWORD, None),
    ("aksk", AK, SK, "aksk"),
    ("ak alone", AK, {}, None),
    ("sk alone", {}, SK, None),
    ("all three", {**IAM, **AK}, {**PASSWORD, **SK, **TOKEN}, "iam"),
    ("aksk and token", AK, {**SK, **TOKEN}, "aksk"),
    ("incomplete iam and token", IAM, TOKEN, "token"),
    ("incomplete iam and aksk", {**IAM, "iam_domain": "", **AK}, {**PASSWORD, **SK}, "aksk"),
    ("blank token", {}, {"api_key": "   "}, None),
    ("blank user name", {**IAM, "iam_username": "  "}, PASSWORD, None),
    ("blank access key, and a token", {"access_key": " "}, {**SK, **TOKEN}, "token"),
    ("a config value that is not text", {**IAM, "iam_domain": 7}, PASSWORD, None),
]
IDS = [row[0] for row in TABLE]


def _provider(config: dict[str, Any], secrets: dict[str, str], **fields: str) -> Provider:
    provider = Provider(kind=ProviderKind.PANGU, **{"base_url": "https://pangu.example", **fields})
    provider.config = {"project_id": "0c5b1e9a", **config}
    provider.set_secrets(secrets)
    return provider


@pytest.mark.parametrize(("name", "config", "secrets", "mode"), TABLE, ids=IDS)
def test_the_rule(name: str, config: dict[str, Any], secrets: dict[str, str], mode: PanguAuthMode | None) -> None:
    assert pangu_auth_mode(config, secrets) == mode


@pytest.mark.parametrize(("name", "config", "secrets", "mode"), TABLE, ids=IDS)
def test_registry_and_adapter_agree(
    name: str, config: dict[str, Any], secrets: dict[str, str], mode: PanguAuthMode | None
) -> None:
    provider = _provider(config, secrets)
    assert provider.is_configured is (mode is not None)
    assert PanguAdapter(provider).auth_mode() == mode


@pytest.mark.parametrize("missing", ["base_url", "project_id"])
def test_credentials_alone_are_not_a_configuration(missing: str) -> None:
    provider = _provider({}, TOKEN)
    if missing == "base_url":
        provider.base_url = ""
    else:
        provider.config = {}
    assert not provider.is_configured
