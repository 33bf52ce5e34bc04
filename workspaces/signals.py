"""A user's API tokens are revoked when their password changes, wherever it changes (the password
page, the admin, `manage.py changepassword`), unless the change says to keep them by setting
``user.keep_api_tokens = True`` before saving (the password page's "Keep my API tokens" box)."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

User = get_user_model()


@receiver(pre_save, sender=User, dispatch_uid="mlportal-password-changed")
def _note_password_change(sender, instance, raw=False, update_fields=None, **kwargs):
    instance._password_changed = False
    if raw or instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return  # e.g. the last_login update of every sign-in
    old = sender.objects.filter(pk=instance.pk).values_list("password", flat=True).first()
    instance._password_changed = old is not None and old != instance.password


@receiver(post_save, sender=User, dispatch_uid="mlportal-password-revokes-tokens")
def _revoke_tokens_on_password_change(sender, instance, created=False, raw=False, **kwargs):
    if raw or created or not getattr(instance, "_password_changed", False):
        return
    instance._password_changed = False
    if getattr(instance, "keep_api_tokens", False):
        instance.revoked_token_count = 0
        return
    from workspaces.services import tokens_revoke_all

    instance.revoked_token_count = tokens_revoke_all(user=instance, reason="password changed")
