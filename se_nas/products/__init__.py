"""What a finished study gives its user: model files, export, comparison and the report.

The model file format (``modelfile``, with the input preprocessing it stores, ``preprocess``, and
its bounded read, ``safetensors_read``), export and full training of a design (``export``), the
comparison against r=16 SE and the plain backbone (``compare``) and the report (``report``: a value
computed once, then rendered as HTML, PNG, CSV and Markdown).

May import: every floor below (``design``, ``nn``, ``record``, ``search``).
"""
