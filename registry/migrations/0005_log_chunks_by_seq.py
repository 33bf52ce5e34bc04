"""Image build logs count chunks like run logs (core.logs): ``offset`` (a character position)
becomes ``seq`` (1, 2, 3 … per image)."""
from django.db import migrations, models


def renumber(apps, schema_editor):
    ImageLogChunk = apps.get_model("registry", "ImageLogChunk")
    image_ids = ImageLogChunk.objects.order_by().values_list("image_id", flat=True).distinct()
    for image_id in list(image_ids):
        for number, pk in enumerate(ImageLogChunk.objects.filter(image_id=image_id).order_by("seq").values_list("pk", flat=True), 1):
            ImageLogChunk.objects.filter(pk=pk).update(seq=number)


class Migration(migrations.Migration):

    dependencies = [
        ("registry", "0004_model_aliases"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="imagelogchunk", name="image_log_chunk_offset"),
        migrations.RenameField(model_name="imagelogchunk", old_name="offset", new_name="seq"),
        migrations.AlterModelOptions(name="imagelogchunk", options={"ordering": ["image", "seq"]}),
        migrations.RunPython(renumber, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="imagelogchunk",
            constraint=models.UniqueConstraint(fields=("image", "seq"), name="image_log_chunk_seq"),
        ),
    ]
