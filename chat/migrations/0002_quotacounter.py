# QuotaCounter joins the chat app. models_registry.0004 has already renamed its table to
# chat_quotacounter with every row in it, so this migration only adds the model to chat's state, and
# moves the model's content type (and with it any permission granted on it) to this app.

import django.db.models.deletion
from django.db import migrations, models


def move_content_type(apps, schema_editor, old="models_registry", new="chat"):
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    if not ContentType.objects.using(db).filter(app_label=new, model="quotacounter").exists():
        ContentType.objects.using(db).filter(app_label=old, model="quotacounter").update(app_label=new)


def move_content_type_back(apps, schema_editor):
    move_content_type(apps, schema_editor, old="chat", new="models_registry")


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("models_registry", "0004_move_quotacounter_to_chat"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="QuotaCounter",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("period", models.CharField(max_length=16)),
                        ("used", models.BigIntegerField(default=0)),
                        ("reserved", models.BigIntegerField(default=0)),
                        (
                            "provider",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="quota_counters",
                                to="models_registry.provider",
                            ),
                        ),
                    ],
                    options={
                        "constraints": [models.UniqueConstraint(fields=("provider", "period"), name="quota_unique_period")],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_type, move_content_type_back),
    ]
