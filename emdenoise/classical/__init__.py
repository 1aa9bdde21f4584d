"""Classical denoisers: the plain filters (:mod:`~emdenoise.classical.filters`), their table and the
:class:`~emdenoise.method.Method` each becomes (:mod:`~emdenoise.classical.methods`, ``build(name, context)``),
their tuning on validation pairs (:mod:`~emdenoise.classical.tuning`), the names the schema offers
(:mod:`~emdenoise.classical.names`) and the beam estimated from a frame's own counts
(:mod:`~emdenoise.classical.flatfield`)."""
