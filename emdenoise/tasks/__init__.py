"""One module per MLCube task; each has ``run(ctx: emdenoise.cli.TaskContext)``."""
