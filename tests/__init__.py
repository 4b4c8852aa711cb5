"""The test suite. Its layout mirrors ``lit_sft/``: ``tests/data/test_grouping.py`` tests
``lit_sft/data/grouping.py``, ``tests/commands/test_fit.py`` tests ``lit_sft/commands/fit.py``, and so on.

System tests that span the package keep folders of their own:

- ``tests/faults``: kill, preempt and resume real ``lit-sft fit`` processes (``faults/helpers.py`` runs
  them, ``faults/injectors.py`` holds the faults their configs name);
- ``tests/distributed``: multi-process runs (DDP, FSDP2, sequence parallelism, ``scripts/run_sft.sh``);
- ``tests/vision``: the vision-language path from image rows to an exported model (``vision/helpers.py``
  builds the tiny Qwen2-VL);
- ``tests/corpus`` with ``tests/test_corpus.py``: the malformed-input corpus through ``lit-sft fit``;
- ``tests/test_resume.py``, ``tests/test_configs.py``, ``tests/test_notebooks.py``: exact resume, every
  shipped config, the notebook.

Shared builders live in ``tests/helpers.py`` and fixtures in ``tests/conftest.py``; a test module never
imports another test module. Markers: ``slow`` (end-to-end, still CPU) and ``gpu`` (see pyproject.toml).
"""
