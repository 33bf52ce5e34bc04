from django.contrib import admin

from deployments.models import Environment, Service, ServiceEvent, ServiceReplica, ServiceRevision


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    list_display = ["name", "workspace", "kind", "engine_url", "publish_address", "created_at"]
    list_filter = ["kind"]
    search_fields = ["name", "engine_url"]


class ReplicaInline(admin.TabularInline):
    model = ServiceReplica
    extra = 0
    readonly_fields = ["number", "container_id", "host", "port", "restarts", "started_at"]


class RevisionInline(admin.TabularInline):
    model = ServiceRevision
    extra = 0
    readonly_fields = ["number", "image", "reason", "created_by", "started_at", "ended_at"]


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ["name", "workspace", "environment", "image", "status", "replicas", "created_at"]
    list_filter = ["status"]
    search_fields = ["name"]
    # Keys stay out of the admin's forms: the service page reveals them to members on demand.
    exclude = ["primary_key", "secondary_key", "proxy_key", "lock_token", "lock_until"]
    readonly_fields = ["status", "image", "environment", "error", "last_update_error", "pending"]
    inlines = [ReplicaInline, RevisionInline]


@admin.register(ServiceEvent)
class ServiceEventAdmin(admin.ModelAdmin):
    list_display = ["service", "level", "message", "created_at"]
    list_filter = ["level"]
