# IamToken now belongs to console (console/0002_iamtoken takes over the same table, `chat_iamtoken`):
# chat lets go of it in the migration state only; no table or row changes.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0002_quotacounter"),
        ("console", "0002_iamtoken"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="IamToken")],
            database_operations=[],
        ),
    ]
