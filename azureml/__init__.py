"""Compatibility shim: lets Azure ML Workbench-era scripts run unchanged on MLPortal.

Only the imports the 2017 labs used are provided, as thin re-exports of ``mlportal_runtime``.
"""
