from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "deployments"
    verbose_name = "Environments and services"

    def ready(self) -> None:
        # Every Docker connection of this process is checked against the portal's allowlist first.
        from compute.engine import set_engine_guard
        from deployments.hosts import guard_engine_url

        set_engine_guard(guard_engine_url)

        # A build that ends enqueues the deploys waiting on its image (no deploy polls a build).
        from deployments.worker import deploys_waiting_on_image
        from registry.signals import image_finished

        image_finished.connect(deploys_waiting_on_image, dispatch_uid="deployments.deploys_waiting_on_image")
