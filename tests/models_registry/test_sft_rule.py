"""The manual's SFT rule: a model that supports evaluation can be evaluated only after fine-tuning (SFT),
and a fine-tuned model that does not support evaluation is never offered it."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.conftest import Persona
from tests.models_registry.factories import make_provider
from tests.models_registry.test_api import api_for


@pytest.mark.parametrize(
    ("evaluate", "fine_tuned", "available"),
    [(True, False, False), (False, True, False), (False, False, False), (True, True, True)],
)
def test_evaluation_needs_both_the_capability_and_sft(
    alice: Persona, client: Client, evaluate: bool, fine_tuned: bool, available: bool
) -> None:
    make_provider(project=alice.project, slug="ds")
    api = api_for(alice, client)
    status, body = api.call(
        "post",
        "/models",
        {
            "name": "deepseek-chat",
            "provider": "ds",
            "capabilities": {"finetune": True, "evaluate": evaluate, "infer": True},
            "fine_tuned": fine_tuned,
        },
    )
    assert status == 201, body
    assert (body["capabilities"]["evaluate"], body["fine_tuned"]) == (evaluate, fine_tuned)
    assert body["evaluation_available"] is available
    status, listed = api.call("get", f"/models/{body['id']}")
    assert status == 200 and listed["evaluation_available"] is available
