"""The model card templates of the targets (package data, ``*.md.j2``), rendered by ``exporter.model_card``.

``card.md.j2`` is the card every package shares; ``<format>.md.j2`` extends it for the target whose manifest
``target.format`` is ``<format>`` and fills the blocks the base leaves to targets. A new target adds its card by
adding its template here; ``card.md.j2`` lists, at its top, the blocks there are to fill.
"""
