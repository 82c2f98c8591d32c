# QuotaCounter moves to the chat app, the only user of it (chat.0002_quotacounter takes it over).
# The table is renamed to the name Django gives it there, rows and all; the model leaves this app's
# state. Nothing references the table, so the rename is a plain ALTER TABLE on SQLite and PostgreSQL.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("models_registry", "0003_model_interfaces"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.AlterModelTable(name="quotacounter", table="chat_quotacounter"),
            ],
            state_operations=[
                migrations.DeleteModel(name="QuotaCounter"),
            ],
        ),
    ]
