"""Coverage-guided fuzzing (atheris) of what the function does with a request's bytes.

Two targets, one property (properties.py): any input gives a tensor / a parsed request or a
documented 4xx ApiError, within a per-input CPU and memory budget. ``image``: image bytes through
``preprocess.preprocess`` exactly as the handler calls it. ``event``: a POST /predict event built
from the bytes (event_input.py) through ``api.route``, ``api.parse_predict`` and
``api.resolve_top_k``. ``make fuzz`` (``python -m fuzz``) runs both; docs/inference.md
("Fuzzing") describes the run and its figures.
"""
