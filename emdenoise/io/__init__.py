"""Files: micrograph formats (:mod:`~emdenoise.io.micrographs`), the HDF5 model and checkpoint files
(:mod:`~emdenoise.io.modelfile`), and the seal and probe that keep damaged or hostile HDF5 from libhdf5
(:mod:`~emdenoise.io.h5safe`), and the memory budget every reader checks a header's claims against
(:mod:`~emdenoise.io.budget`)."""
