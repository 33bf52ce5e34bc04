"""The flush that ends every transactional test survives another process reading the test database.

The session keeps processes on that database (the ASGI server re-reads its routing table every
quarter second with joins over several tables). A reader inside a transaction holding one table
while it asks for another, and the flush's TRUNCATE taking every table in turn, deadlock; PostgreSQL
cancels the flush, and the next test then found the last one's rows ("olivia already exists").
"""
from __future__ import annotations

import re
import threading
import time

import pytest
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


def _truncate_order() -> list[str]:
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    statement = connection.ops.sql_flush(no_style(), tables)[0]
    return re.findall(r'"([^"]+)"', statement.split("RESTART")[0])


def test_the_flush_is_retried_when_a_reader_deadlocks_it(django_user_model, capsys):
    if connection.vendor != "postgresql":
        pytest.skip("the deadlock is PostgreSQL's; the embedded SQLite flush takes one file lock")
    django_user_model.objects.create(username="left-behind")
    order = _truncate_order()
    first, last = order[0], order[-1]
    reader = connection.get_new_connection(connection.get_connection_params())
    reader.autocommit = False
    holding, failures = threading.Event(), []

    def read():
        try:
            with reader.cursor() as cursor:
                cursor.execute(f'SELECT 1 FROM "{last}" LIMIT 1')  # holds the table the TRUNCATE takes last
                holding.set()
                time.sleep(0.4)  # the TRUNCATE now holds the first table and waits for the last
                cursor.execute(f'SELECT 1 FROM "{first}" LIMIT 1')  # waits for the TRUNCATE: a cycle
                time.sleep(0.2)
            reader.rollback()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)
            reader.rollback()
        finally:
            reader.close()

    thread = threading.Thread(target=read)
    thread.start()
    assert holding.wait(10)
    call_command("flush", interactive=False, verbosity=0)
    thread.join(30)

    assert not django_user_model.objects.filter(username="left-behind").exists()
    assert "the flush met a lock conflict" in capsys.readouterr().err  # the deadlock happened and was retried
    assert not failures, failures  # PostgreSQL cancelled the flush (it waited first), not the reader
