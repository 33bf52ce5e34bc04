from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "monitoring"
    verbose_name = "Model data collection"

    def ready(self) -> None:
        from django.apps import apps

        from .receivers import drift_to_pipelines
        from .signals import drift_detected

        if apps.is_installed("pipelines"):
            drift_detected.connect(drift_to_pipelines, dispatch_uid="monitoring.drift_to_pipelines")
