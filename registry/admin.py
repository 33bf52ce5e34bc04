from django.contrib import admin

from registry.models import Image, Manifest, ManifestModel, Model


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "workspace", "file_name", "size", "framework", "scan_verdict", "accepted_at",
                    "created_by", "created_at"]
    list_filter = ["framework", "scan_verdict"]
    search_fields = ["name", "sha256"]
    readonly_fields = ["file", "size", "sha256"]


class ManifestModelInline(admin.TabularInline):
    model = ManifestModel
    extra = 0
    readonly_fields = ["model", "position"]


@admin.register(Manifest)
class ManifestAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "workspace", "runtime", "content_hash", "created_at"]
    search_fields = ["name", "content_hash"]
    inlines = [ManifestModelInline]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "workspace", "status", "tag", "size", "build_seconds", "created_at"]
    list_filter = ["status"]
    search_fields = ["name", "tag"]
