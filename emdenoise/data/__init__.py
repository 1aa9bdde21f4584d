"""The data side of the pipeline: where raw data come from and how they become processed splits.

- :mod:`~emdenoise.data.sources`: the named download sources;
- :mod:`~emdenoise.data.fetch` (HTTP/S3 client with resume and verification), :mod:`~emdenoise.data.archive`
  (safe zip extraction), :mod:`~emdenoise.data.synthetic` (the embedded generator);
- :mod:`~emdenoise.data.splits`: reading the processed splits and the dataset card.
"""
