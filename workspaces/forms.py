from django import forms
from django.conf import settings
from django.contrib.auth.forms import PasswordChangeForm

from workspaces.models import Role


class WorkspaceForm(forms.Form):
    name = forms.CharField(max_length=63, help_text="Lowercase letters, digits, '-' or '_'.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.CONTRIBUTOR)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. 'laptop CLI' or 'CI'.")
    expires_in_days = forms.IntegerField(min_value=1, label="Expires in (days)", required=False)
    read_only = forms.BooleanField(required=False, label="Read-only (GET requests only)")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["expires_in_days"]
        field.initial = settings.MLPORTAL_TOKEN_DAYS
        field.widget.attrs["max"] = settings.MLPORTAL_TOKEN_MAX_DAYS
        field.help_text = f"1 to {settings.MLPORTAL_TOKEN_MAX_DAYS}; default {settings.MLPORTAL_TOKEN_DAYS}."


class PortalPasswordChangeForm(PasswordChangeForm):
    keep_tokens = forms.BooleanField(
        required=False, label="Keep my API tokens working",
        help_text="Unticked, every API token of yours is revoked with the old password.")
