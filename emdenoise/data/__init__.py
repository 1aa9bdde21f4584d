"""The data side of the pipeline: where raw data come from and how they become processed splits.

- :mod:`~emdenoise.data.acquire.sources`: ``download.source`` parsed into a
  :class:`~emdenoise.data.acquire.sources.Source`, and
  the named sources;
- :mod:`~emdenoise.data.acquire.run`: the download engine (synthetic, S3 mirror, zip URL or file, local folder),
  committing the files and ``MANIFEST.json`` (:mod:`~emdenoise.data.acquire.manifest`) last in one Transaction;
- :mod:`~emdenoise.data.acquire.fetch` (HTTP/S3 client with resume and verification),
  :mod:`~emdenoise.data.acquire.archive` (safe zip extraction);
- the embedded generator: :mod:`~emdenoise.data.simulate.pairs` (one pair) and
  :mod:`~emdenoise.data.simulate.writer` (the raw files), over :mod:`~emdenoise.data.simulate.scenes`
  (specimens as atoms) and :mod:`~emdenoise.data.simulate.physics` (image formation), and
  :mod:`~emdenoise.data.simulate.abtem_source` (the same specimens through abTEM's multislice, optional);
- :mod:`~emdenoise.data.prepare.raw`: finding, reading and validating the raw layout;
- :mod:`~emdenoise.data.prepare.run`: the split and the dataset card, the card committed last;
- :mod:`~emdenoise.data.card`: the dataset card (:class:`~emdenoise.data.card.DatasetCard`);
- :mod:`~emdenoise.data.splits`: reading the processed splits.
"""
