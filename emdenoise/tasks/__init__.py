"""One thin module per MLCube task; each has ``run(ctx: TaskContext)`` (:mod:`emdenoise.tasks.context`): it
reads its inputs, calls the engines and commits its outputs."""
