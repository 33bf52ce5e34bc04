from django import forms

from runs.models import Target


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=63, help_text="Lowercase letters, digits, '-' or '_', e.g. churn_prediction.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    template = forms.ChoiceField(required=False, choices=[("", "Blank project")], widget=forms.RadioSelect)

    def __init__(self, *args, templates=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["template"].choices = [("", "Blank project")] + [(t.slug, t.name) for t in templates]


class SettingsForm(forms.Form):
    requirements = forms.CharField(
        required=False, label="Environment (requirements.txt)", widget=forms.Textarea(attrs={"rows": 6, "class": "mono"}),
        help_text="One requirement per line, e.g. scikit-learn>=1.5. Saved as the project's requirements.txt.",
    )
    default_target = forms.ChoiceField(choices=Target.choices)
    time_limit_s = forms.IntegerField(label="Time limit (seconds)", min_value=1)
    memory_mb = forms.IntegerField(label="Memory (MiB)", min_value=16)
    cpus = forms.FloatField(label="CPUs", min_value=0.01)
    allow_network = forms.BooleanField(required=False, label="Allow network access (docker)")
    outputs_max_mb = forms.IntegerField(
        required=False, min_value=1, label="Outputs cap (MiB)",
        help_text="A run whose outputs/ is larger fails with the cap named. Empty: the portal's maximum.",
    )


class RunForm(forms.Form):
    script = forms.ChoiceField(choices=[])
    args = forms.CharField(required=False, label="Arguments", help_text="As on a command line, e.g. --alpha 0.5 \"two words\".")
    target = forms.ChoiceField(choices=Target.choices)

    def __init__(self, *args, scripts=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["script"].choices = [(s, s) for s in scripts]


class UploadForm(forms.Form):
    file = forms.FileField()
    path = forms.CharField(required=False, help_text="Where to store a single file (default: its name).")
    extract = forms.BooleanField(required=False, label="Extract (zip or tar.gz)")
    replace = forms.BooleanField(required=False, label="Replace all project files")


class EditFileForm(forms.Form):
    content = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 24, "class": "mono", "spellcheck": "false"}), strip=False)


class NewFileForm(forms.Form):
    path = forms.CharField(max_length=255, help_text="e.g. train.py or data/readme.txt")
