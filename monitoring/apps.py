from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "monitoring"
    verbose_name = "Model data collection"

    def ready(self) -> None:
        from monitoring import receivers  # noqa: F401 (a deleted service's captured files go after it)
