"""Page forms. They only collect input: every rule is checked by registry.checks and registry.services."""
from __future__ import annotations

from django import forms

from registry.checks import FRAMEWORKS

FRAMEWORK_CHOICES = [("", "Read it from the file")] + [(f, f) for f in FRAMEWORKS]
TAGS_HELP = 'A JSON object, like {"stage": "test", "auc": "0.91"}.'


class ModelRegisterForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Like model.pkl; registering the same name again adds a version.")
    file = forms.FileField(required=False, help_text="The model file (stored as is, never loaded by the portal).")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    tags = forms.CharField(required=False, help_text=TAGS_HELP, widget=forms.TextInput(attrs={"placeholder": "{}"}))
    framework = forms.ChoiceField(required=False, choices=FRAMEWORK_CHOICES,
                                  help_text="A pickle's framework is read from what it references; a declared one "
                                            "only names a file that holds no pickle (ONNX, Keras…).")

    def __init__(self, *args, from_run: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if from_run:
            del self.fields["file"]


class ModelEditForm(forms.Form):
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    tags = forms.CharField(required=False, help_text=TAGS_HELP)


class ManifestForm(forms.Form):
    SOURCES = [("upload", "Upload the files"), ("project", "Take them from a project")]

    name = forms.CharField(max_length=100, help_text="Lowercase, like churnpred; the same name again adds a version.")
    models = forms.MultipleChoiceField(choices=[], help_text="The model versions the image carries.",
                                       widget=forms.SelectMultiple(attrs={"size": 6}))
    source = forms.ChoiceField(choices=SOURCES, initial="upload", widget=forms.RadioSelect)
    score_file = forms.FileField(required=False, label="score.py", help_text="Defines init() and run(input).")
    schema_file = forms.FileField(required=False, label="service_schema.json")
    requirements_file = forms.FileField(required=False, label="requirements.txt (optional)")
    project = forms.ChoiceField(required=False, choices=[])
    score_path = forms.CharField(required=False, initial="score.py", label="score.py path in the project")
    schema_path = forms.CharField(required=False, initial="service_schema.json", label="Schema path in the project")
    requirements_path = forms.CharField(required=False, initial="", label="requirements.txt path (optional)")
    confirm_unknown = forms.BooleanField(
        required=False, label="I trust the model versions whose scan found unknown globals or could not finish",
        help_text="Dangerous versions are refused unless a workspace owner accepted them.")

    def __init__(self, *args, model_choices=(), project_choices=(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["models"].choices = list(model_choices)
        if project_choices:
            self.fields["project"].choices = [("", "—")] + list(project_choices)
        else:
            for name in ("source", "project", "score_path", "schema_path", "requirements_path"):
                del self.fields[name]


class ImageCreateForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, help_text="Defaults to the manifest's name.")
