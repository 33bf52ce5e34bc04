from django.apps import AppConfig


class WorkspacesConfig(AppConfig):
    name = "workspaces"
    verbose_name = "Workspaces and people"

    def ready(self) -> None:
        from workspaces import schema  # noqa: F401 (registers the OpenAPI auth extension)
        from workspaces import signals  # noqa: F401 (a password change revokes API tokens)
