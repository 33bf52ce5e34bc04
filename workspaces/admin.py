from django.contrib import admin

from workspaces.models import Activity, ApiToken, Membership, Profile, Workspace


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["name", "created_by", "created_at", "local_runs_allowed"]
    list_editable = ["local_runs_allowed"]
    list_filter = ["local_runs_allowed"]
    search_fields = ["name"]
    inlines = [MembershipInline]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "revoked_at"]
    exclude = ["token_hash"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]


@admin.register(Activity)
class ActivityAdmin(admin.ModelAdmin):
    list_display = ["created_at", "workspace", "actor", "verb", "target_type", "target_name"]
    list_filter = ["verb", "target_type"]


admin.site.register(Profile)
