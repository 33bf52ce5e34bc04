from django.contrib import admin

from runs.models import Project, ProjectFile, Run, RunOutput


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "workspace", "template", "default_target", "created_by", "created_at"]
    search_fields = ["name", "description"]
    list_filter = ["workspace"]


@admin.register(ProjectFile)
class ProjectFileAdmin(admin.ModelAdmin):
    list_display = ["path", "project", "size", "updated_at"]
    search_fields = ["path"]


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["__str__", "workspace", "kind", "script", "target", "status", "created_by", "created_at"]
    list_filter = ["status", "target", "kind"]
    search_fields = ["script", "project__name"]
    list_select_related = ["project", "workspace", "created_by"]


@admin.register(RunOutput)
class RunOutputAdmin(admin.ModelAdmin):
    list_display = ["path", "run", "size"]
    search_fields = ["path"]
