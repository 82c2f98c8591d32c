"""QuotaCounter moves from models_registry to chat: a database with counters in it keeps every row,
forwards and back, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.apps.registry import Apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from chat.models import QuotaCounter
from chat.quota import quota_reserve
from models_registry.models import Provider

BEFORE = [("models_registry", "0003_model_interfaces"), ("chat", "0001_initial")]
# Where the model lived: a name mypy's Django plugin cannot look up, since today it is gone.
OLD_QUOTA_COUNTER = ("models_registry", "QuotaCounter")


def _migrate(targets: list[tuple[str, str]]) -> Apps:
    """Migrate to `targets`; returns the models as the database now has them (every app)."""
    MigrationExecutor(connection).migrate(targets)
    loader = MigrationExecutor(connection).loader
    return loader.project_state(list(loader.applied_migrations)).apps


def _latest() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def _tables() -> set[str]:
    with connection.cursor() as cursor:
        return set(connection.introspection.table_names(cursor))


@pytest.fixture
def old_schema(transactional_db: None) -> Iterator[Apps]:
    latest = _latest()
    apps = _migrate(BEFORE)
    try:
        yield apps
    finally:
        _migrate(latest)  # the rest of the suite needs today's schema


def test_counters_keep_their_rows_forwards_and_back(old_schema: Apps) -> None:
    project_model = old_schema.get_model("console", "Project")
    project = project_model.objects.create(id="p" * 32, name="acme")
    provider = old_schema.get_model("models_registry", "Provider").objects.create(
        project=project, slug="sim", name="Sim", kind="openai_compatible", token_quota=10_000
    )
    old_counter = old_schema.get_model(*OLD_QUOTA_COUNTER)
    total = old_counter.objects.create(provider=provider, period="total", used=1234, reserved=56)
    month = old_counter.objects.create(provider=provider, period="2026-11", used=78, reserved=0)
    content_types = old_schema.get_model("contenttypes", "ContentType").objects
    content_types.filter(app_label="chat", model="quotacounter").delete()
    old_type, _ = content_types.get_or_create(app_label="models_registry", model="quotacounter")
    assert "models_registry_quotacounter" in _tables()

    new_schema = _migrate(_latest())

    assert "models_registry_quotacounter" not in _tables() and "chat_quotacounter" in _tables()
    rows = {c.pk: (c.provider_id, c.period, c.used, c.reserved) for c in QuotaCounter.objects.all()}
    assert rows == {total.pk: (provider.pk, "total", 1234, 56), month.pk: (provider.pk, "2026-11", 78, 0)}
    moved_type = new_schema.get_model("contenttypes", "ContentType").objects.get(pk=old_type.pk)
    assert (moved_type.app_label, moved_type.model) == ("chat", "quotacounter")
    # The moved table works as before: reserving updates the existing row, the unique period holds,
    # and new rows get fresh ids (the id sequence came along with the table).
    assert quota_reserve(provider=Provider.objects.get(pk=provider.pk), tokens=100) == (total.pk, "total")
    assert QuotaCounter.objects.get(pk=total.pk).reserved == 156
    fresh = QuotaCounter.objects.create(provider_id=provider.pk, period="2026-12")
    assert fresh.pk > max(total.pk, month.pk)

    back = _migrate(BEFORE)

    assert "chat_quotacounter" not in _tables() and "models_registry_quotacounter" in _tables()
    old_rows = {c.pk: (c.period, c.used, c.reserved) for c in back.get_model(*OLD_QUOTA_COUNTER).objects.all()}
    assert old_rows == {total.pk: ("total", 1234, 156), month.pk: ("2026-11", 78, 0), fresh.pk: ("2026-12", 0, 0)}
    restored_type = back.get_model("contenttypes", "ContentType").objects.get(pk=old_type.pk)
    assert restored_type.app_label == "models_registry"
