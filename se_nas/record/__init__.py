"""The study: the one result format, and what is computed from it.

Trial records, statuses and settings (``study``), per-design means with their noise, paired tests
and fronts (``results``), where studies live (``storage``, with SQLite's filesystem errors in
``sqlite``), which process owns a running trial (``claims``: claims, heartbeats, dead processes'
trials), the one retry rule (``retries``) and the samplers that propose designs (``samplers``).

May import: ``se_nas.design`` (not ``nn``: reading a study never needs torch).
"""
