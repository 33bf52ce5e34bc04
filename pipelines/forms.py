"""Page forms. They only collect input: every rule is checked by pipelines.services."""
from __future__ import annotations

from django import forms

from pipelines.models import Pipeline


class PipelineForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Like churn-retrain.")
    project = forms.ChoiceField(help_text="Whose script runs, with the project's current files.")
    script = forms.CharField(max_length=255, help_text="The training script, e.g. CATelcoCustomerChurnModelingWithoutDprep.py")
    target = forms.ChoiceField(choices=[("", "the project's default"), ("docker", "docker"), ("local", "local")], required=False)
    output_path = forms.CharField(max_length=255, initial="outputs/model.pkl", label="Model output",
                                  help_text="The file the run writes that becomes the next model version.")
    service = forms.ChoiceField(help_text="The service that moves to the new model (same URL, same keys).")
    gate = forms.CharField(max_length=300, required=False,
                           help_text='Optional: "DTree Accuracy >= served - 0.01" or "DTree Accuracy >= 0.8".')
    mode = forms.ChoiceField(choices=Pipeline.Mode.choices, initial=Pipeline.Mode.DEPLOY)
    rollout = forms.ChoiceField(choices=Pipeline.Rollout.choices, initial=Pipeline.Rollout.ROLLING)
    when_busy = forms.ChoiceField(choices=Pipeline.WhenBusy.choices, initial=Pipeline.WhenBusy.QUEUE, label="When busy",
                                  help_text="A trigger that arrives while a retraining is going.")

    def __init__(self, *args, projects=(), services=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["project"].choices = list(projects)
        self.fields["service"].choices = list(services)


class WebhookForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Like chatops or ci.")
    url = forms.CharField(max_length=500, label="URL", help_text="Where the portal POSTs, e.g. https://hooks.example.com/mlportal")
    events = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, help_text="None ticked: every event.",
        choices=[("run.finished", "Run finished"), ("model.registered", "Model registered"), ("image.built", "Image built"),
                 ("service.updated", "Service updated"), ("pipeline.finished", "Pipeline finished"),
                 ("drift.detected", "Drift detected")])


class PipelineEditForm(forms.Form):
    """What can change on a pipeline's page (its project and service stay)."""

    gate = forms.CharField(max_length=300, required=False, help_text='Empty: no gate. "DTree Accuracy >= served - 0.01"')
    schedule = forms.CharField(max_length=100, required=False,
                               help_text='Empty: none. A cron line in UTC ("0 3 * * *") or "every 6 hours".')
    trigger_on_data = forms.BooleanField(required=False, label="Retrain when a file under data/ changes")
    trigger_on_drift = forms.BooleanField(required=False, label="Retrain when the service's inputs drift")
    mode = forms.ChoiceField(choices=Pipeline.Mode.choices)
    rollout = forms.ChoiceField(choices=Pipeline.Rollout.choices)
    when_busy = forms.ChoiceField(choices=Pipeline.WhenBusy.choices, label="When busy")
    enabled = forms.BooleanField(required=False)
