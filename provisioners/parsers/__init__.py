"""Pure parsers of real tool outputs, one module per tool.

``ubuntu_drivers`` (devices/list), ``nvidia_smi`` (CSV query, table, ``-q -x`` XML, failure
messages), ``lspci`` (``-nn``/``-nnk``/IOMMU groups), ``dmesg`` (NVRM events), ``nvcc``
(``--version``), ``ollama`` (CLI, journal, API), ``vllm`` (server log). They never run commands
and never raise on unexpected text (except :func:`nvidia_smi.parse_xml` on non-XML); formats are
checked against the real outputs in ``tests/fixtures/corpus``.
"""
