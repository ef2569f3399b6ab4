from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("users", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="passwordresetrequest",
            name="resends",
            field=models.PositiveSmallIntegerField(default=0),
        ),
    ]
