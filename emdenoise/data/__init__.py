"""The data side of the pipeline: where raw data come from and how they become processed splits.

- :mod:`~emdenoise.data.sources`: ``download.source`` parsed into a :class:`~emdenoise.data.sources.Source`, and
  the named sources;
- :mod:`~emdenoise.data.download`: the download engine (synthetic, S3 mirror, zip URL or file, local folder),
  committing the files and ``MANIFEST.json`` (:mod:`~emdenoise.data.manifest`) last in one Transaction;
- :mod:`~emdenoise.data.fetch` (HTTP/S3 client with resume and verification), :mod:`~emdenoise.data.archive`
  (safe zip extraction), :mod:`~emdenoise.data.synthetic` (the embedded generator), over
  :mod:`~emdenoise.data.scenes` (specimens as atoms) and :mod:`~emdenoise.data.physics` (image formation), and
  :mod:`~emdenoise.data.abtem_source` (the same specimens through abTEM's multislice, optional);
- :mod:`~emdenoise.data.raw`: finding, reading and validating the raw layout;
- :mod:`~emdenoise.data.preprocess`: the split and the dataset card, the card committed last;
- :mod:`~emdenoise.data.splits`: reading the processed splits and the dataset card.
"""
