"""One thin module per MLCube task; each has ``run(ctx: TaskContext)`` (:mod:`emdenoise.runtime.task`): it
reads its inputs, calls the engines and commits its outputs."""
