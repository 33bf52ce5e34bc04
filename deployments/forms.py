"""Page forms. They only collect input: every rule is checked by deployments.checks and deployments.services."""
from __future__ import annotations

import json

from django import forms
from django.conf import settings

from deployments import autoscale

LABELS_HELP = 'A JSON object, like {"stage": "production"}.'


class JSONObjectField(forms.CharField):
    """Text holding a JSON object; the service checks what is in it."""

    def clean(self, value):
        value = super().clean(value)
        if not value:
            return {}
        try:
            data = json.loads(value)
        except ValueError:
            raise forms.ValidationError('Not valid JSON: write an object like {"stage": "production"}.') from None
        if not isinstance(data, dict):
            raise forms.ValidationError('Write a JSON object, like {"stage": "production"}.')
        return data


class EnvironmentForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Like local, staging or production.")
    kind = forms.ChoiceField(choices=[("local", "Local (a Docker engine)"), ("cluster", "Cluster (a Docker Swarm manager)")],
                             initial="local", required=False,
                             help_text="Cluster: every service is a Swarm service on the engine's swarm.")
    init_swarm = forms.BooleanField(required=False, label="Initialise a single-node swarm",
                                    help_text="Cluster only: when the engine is in no swarm, make it the manager of a new one.")
    engine_url = forms.CharField(required=False, label="Docker engine URL",
                                 help_text="Empty: the workers' own engine. Or tcp://host:2375, ssh://user@host.")
    publish_address = forms.CharField(required=False, initial="127.0.0.1",
                                      help_text="Where replicas publish their port on the engine's host; the workers must reach it.")
    labels = JSONObjectField(required=False, help_text=LABELS_HELP)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def clean_kind(self) -> str:
        return self.cleaned_data.get("kind") or "local"  # left out (a script's POST): a local environment


class EnvironmentEditForm(forms.Form):
    """What can change on an environment (not its name or kind)."""

    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    labels = JSONObjectField(required=False, help_text=LABELS_HELP)
    engine_url = forms.CharField(required=False, label="Docker engine URL",
                                 help_text="Empty: the workers' own engine. Fixed while services run here.")
    publish_address = forms.CharField(required=False, help_text="Fixed while services run here.")


def _environment_field() -> forms.ChoiceField:
    return forms.ChoiceField(required=False, choices=[], help_text="Empty: your active environment (or a new 'local' one).")


def _number(label: str, help_text: str, **attrs) -> forms.CharField:
    """A number box whose value the autoscale check judges (its message names the field and the limits)."""
    return forms.CharField(required=False, label=label, help_text=help_text,
                           widget=forms.NumberInput(attrs={"step": 1, **attrs}))


class AutoscaleFields(forms.Form):
    """Azure ML's autoscale settings on the create forms (the same the Autoscale tab edits). Left
    empty, each takes Azure ML's default; deployments.autoscaling.check judges them."""

    autoscale_enabled = forms.BooleanField(required=False, label="Autoscale",
                                           help_text="Scale between the minimum and the maximum from how busy the scoring "
                                                     "workers are; leave Replicas empty (it starts at the minimum).")
    autoscale_min_replicas = _number("Autoscale: min replicas", "", min=1)
    autoscale_max_replicas = _number("Autoscale: max replicas", "", min=1)
    autoscale_target_utilization = _number("Autoscale: target utilisation %", "Share of scoring workers busy to aim for: "
                                           "1 to 100 (default 70).", min=1, max=100)
    autoscale_refresh_seconds = _number("Autoscale: refresh (seconds)", "How often it decides, averaging over that window: "
                                        f"at least 1 (default {autoscale.DEFAULT_REFRESH}).", min=1, max=autoscale.MAX_REFRESH)
    autoscale_stable_seconds = _number("Autoscale: scale-down window (seconds)", "How long the load must stay lower before it "
                                       f"scales down: 1 to {autoscale.MAX_STABLE} (default {autoscale.DEFAULT_STABLE}).",
                                       min=1, max=autoscale.MAX_STABLE)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cap = settings.MLPORTAL_MAX_REPLICAS
        self.fields["autoscale_min_replicas"].help_text = f"1 to {cap} (default {autoscale.DEFAULT_MIN})."
        self.fields["autoscale_max_replicas"].help_text = f"1 to {cap}, at least the minimum (default {min(autoscale.DEFAULT_MAX, cap)})."
        for name in ("autoscale_min_replicas", "autoscale_max_replicas"):
            self.fields[name].widget.attrs["max"] = cap
        # Declared on this base class, they would come first: they go right after Replicas.
        own = [name for name in self.fields if not name.startswith("autoscale_")]
        at = own.index("replicas") + 1 if "replicas" in own else len(own)
        self.order_fields(own[:at] + [name for name in self.fields if name.startswith("autoscale_")] + own[at:])

    def autoscale_given(self) -> dict:
        """The autoscale settings filled in (without the prefix); an unticked box is autoscaling off."""
        from deployments.autoscaling import given_in

        return given_in(self.cleaned_data)


def _replicas_field() -> forms.IntegerField:
    return forms.IntegerField(required=False, widget=forms.NumberInput(attrs={"placeholder": "1", "min": 1}))


def _request_timeout_field() -> forms.FloatField:
    return forms.FloatField(required=False, label="Request time limit (seconds)",
                            help_text="How long one scoring request may run before it answers 504. "
                                      "Empty: the portal's default.")


class RealtimeForm(AutoscaleFields):
    """The lab's one-shot ``service create realtime``."""

    name = forms.CharField(max_length=200, help_text="The service name, like churnpred.")
    model_file = forms.FileField(label="Model file", help_text="Like model.pkl; registered as a new model version.")
    score_file = forms.FileField(label="score.py", help_text="Defines init() and run(input).")
    schema_file = forms.FileField(label="service_schema.json")
    requirements_file = forms.FileField(required=False, label="requirements.txt (optional)")
    model_name = forms.CharField(required=False, max_length=200, help_text="Empty: the model file's name.")
    environment = _environment_field()
    replicas = _replicas_field()
    request_timeout_s = _request_timeout_field()
    confirm_unknown = forms.BooleanField(
        required=False, label="I trust this model file even if its scan finds unknown globals or cannot finish",
        help_text="Every model file is scanned for code first; a dangerous one is refused unless an owner accepted it.")

    def __init__(self, *args, environment_choices=(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["environment"].choices = [("", "(active environment)")] + list(environment_choices)
        self.fields["replicas"].help_text = (f"1 to {settings.MLPORTAL_MAX_REPLICAS}; empty: 1 (with autoscaling: "
                                             "its minimum).")


class FromImageForm(AutoscaleFields):
    name = forms.CharField(max_length=200)
    image = forms.ChoiceField(choices=[], help_text="A built image of this workspace.")
    environment = _environment_field()
    replicas = _replicas_field()
    cpus = forms.FloatField(initial=1.0, label="CPUs per replica")
    memory_mb = forms.IntegerField(initial=1024, label="Memory per replica (MB)")
    request_timeout_s = _request_timeout_field()

    def __init__(self, *args, image_choices=(), environment_choices=(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["image"].choices = list(image_choices)
        self.fields["environment"].choices = [("", "(active environment)")] + list(environment_choices)
        self.fields["replicas"].help_text = (f"1 to {settings.MLPORTAL_MAX_REPLICAS}; empty: 1 (with autoscaling: "
                                             "its minimum).")
